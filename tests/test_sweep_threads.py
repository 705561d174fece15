"""The sweep runner gives each run the CPU threads of threads.py's rule (issue 21, section 1):
--threads, else the user's OMP_NUM_THREADS, else 1; never cores // --parallel over the user's
choice (a 4-run x 2-epoch sweep took 17 min 48 s on a shared 2-core machine that way). The runs are
a stand-in that writes down the thread variables it was started with."""

import json

import pytest
import yaml

from consistency_vae.errors import ConfigError
from consistency_vae.sweep.command import main as sweep_main
from consistency_vae.sweep.runner import run_sweep

STAND_IN = """import json, os, sys
with open(os.environ["THREADS_LOG"], "a") as f:
    f.write(json.dumps({k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}) + "\\n")
"""


@pytest.fixture
def sweep(tmp_path, monkeypatch):
    """(sweep file, runs folder, a function giving the thread variables each run saw)."""
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({
        "name": "grid", "method": "grid", "parameters": {"a": {"values": [1, 2]}},
        "command": ["${env}", "${interpreter}", str(tmp_path / "stand_in.py"), "${args}"]}))
    log = tmp_path / "threads.log"
    monkeypatch.setenv("THREADS_LOG", str(log))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    return path, tmp_path / "runs", lambda: [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.parametrize("env, parallel, expected, source", [
    ("13", 2, "13", "OMP_NUM_THREADS"),  # the user's choice, whatever the cores and --parallel
    (None, 1, "1", "default"),  # not the machine's cores: those wait on each other when shared
])
def test_each_run_gets_the_users_threads_else_one(sweep, monkeypatch, capsys, env, parallel, expected,
                                                  source):
    path, runs, seen = sweep
    if env is not None:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    assert run_sweep(str(path), parallel=parallel, runs_dir=str(runs))["finished"] == 2
    assert seen() == [{"OMP_NUM_THREADS": expected, "MKL_NUM_THREADS": expected}] * 2
    assert f"{expected} thread(s) each ({source})" in capsys.readouterr().out


def test_the_sweep_command_s_threads_option_wins(sweep, monkeypatch, capsys):
    path, runs, seen = sweep
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr("consistency_vae.sweep.command.check_against_cli", lambda *a: None)  # a stand-in
    sweep_main([str(path), "--runs_dir", str(runs), "--threads", "2"])
    assert seen() == [{"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}] * 2
    assert "2 thread(s) each (--threads)" in capsys.readouterr().out


def test_a_bad_thread_count_stops_the_sweep_before_any_run(sweep, monkeypatch):
    path, runs, _ = sweep
    monkeypatch.setenv("OMP_NUM_THREADS", "all")
    with pytest.raises(ConfigError, match="OMP_NUM_THREADS='all'"):
        run_sweep(str(path), runs_dir=str(runs))
    assert list((runs / "sweep-grid" / "attempts").glob("*.json")) == []  # no run was recorded
