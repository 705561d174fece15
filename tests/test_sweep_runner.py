"""The sweep runner: its records and retries, and its claims (two runners on one runs folder
never train the same run twice), --index/--only/--list, resuming, and the SLURM array script.

The runs here are a stand-in command (a few lines of Python that write down their arguments and
sleep), so the runner's bookkeeping is tested in seconds; tests/test_sweep_offline.py runs real ones.
"""

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from consistency_vae.errors import ConfigError
from consistency_vae.sweep import claims
from consistency_vae.sweep.command import main as sweep_main
from consistency_vae.sweep.resume import resume_args
from consistency_vae.sweep.runner import run_sweep
from consistency_vae.sweep.store import SweepStore, run_key
from consistency_vae.sweep.sweep_file import load_sweep
from tests.conftest import ROOT

DEAD_PID = 2**22 + 7  # above the default pid_max of 2**22: never a running process
RECORDER = """import os, sys, time
with open(os.environ["TRAINED_LOG"], "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
time.sleep(float(os.environ.get("TRAIN_SECONDS", "0")))
"""


@pytest.fixture
def grid(tmp_path, monkeypatch):
    """A grid sweep over a = 1..8 whose runs write their arguments into trained.log."""
    recorder = tmp_path / "recorder.py"
    recorder.write_text(RECORDER)
    sweep_file = tmp_path / "grid.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "grid", "method": "grid", "parameters": {"a": {"values": list(range(1, 9))}},
        "command": ["${env}", "${interpreter}", str(recorder), "${args}"]}))
    log = tmp_path / "trained.log"
    monkeypatch.setenv("TRAINED_LOG", str(log))
    monkeypatch.setenv("WANDB_MODE", "disabled")

    def trained() -> list[str]:
        """The --a=N of every run that ran, in order."""
        lines = log.read_text().splitlines() if log.is_file() else []
        return [next(w for w in line.split() if w.startswith("--a=")) for line in lines]

    return {"file": sweep_file, "runs": tmp_path / "runs", "log": log, "trained": trained}


# --- claim files ----------------------------------------------------------------------------
def test_a_claim_is_held_until_released(tmp_path):
    path = tmp_path / "claims" / "k"
    assert claims.claim(path) and not claims.claim(path)  # ours, and live: not twice
    held = json.loads(path.read_text())
    assert held["host"] == socket.gethostname() and held["pid"] == os.getpid()
    claims.release(path)
    assert not path.exists() and claims.claim(path)


@pytest.mark.parametrize(("host", "age_s", "taken_over"), [
    ("same", 0, True),  # this host, a pid that no longer runs
    ("other", 0, False),  # another host, touched just now: alive as far as we can tell
    ("other", claims.STALE_S + 5, True),  # another host, no heartbeat for STALE_S
])
def test_a_stale_claim_is_taken_over_and_a_live_one_is_not(tmp_path, host, age_s, taken_over):
    path = tmp_path / "k"
    holder = {"host": socket.gethostname() if host == "same" else "node-elsewhere", "pid": DEAD_PID}
    path.write_text(json.dumps(holder))
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    assert claims.claim(path) is taken_over
    assert json.loads(path.read_text())["pid"] == (os.getpid() if taken_over else DEAD_PID)
    claims.release(path)  # only our own claim is deleted
    assert path.exists() is (not taken_over)


def _claim_in_child(path: str, results, done) -> None:
    results.put(claims.claim(Path(path)))
    done.wait(30)  # alive until every process has tried: a winner that exits leaves a stale claim


def test_many_processes_taking_over_one_stale_claim_give_it_to_one(tmp_path):
    path = tmp_path / "k"
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": DEAD_PID}))
    ctx = multiprocessing.get_context("fork")
    results, done = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_claim_in_child, args=(str(path), results, done)) for _ in range(8)]
    for p in procs:
        p.start()
    won = sorted(results.get(timeout=30) for _ in procs)
    done.set()
    for p in procs:
        p.join(30)
    assert won == [False] * 7 + [True]


# --- records, retries, failures (no training) ------------------------------------------------
def recorded(store: SweepStore, params: dict, status: str, **fields) -> dict:
    """A run record as a runner leaves it."""
    record = store.new_record(params, run_key(params, []), [])
    record.update(status=status, **fields)
    store.save(record)
    return record


def test_rerun_retries_failed_grid_points_but_one_invocation_does_not(tmp_path):
    config = load_sweep(ROOT / "sweeps/alpha_mnist.yaml")
    first = SweepStore(tmp_path, "sweeps/alpha_mnist.yaml", config)
    point, cut = {"model.alpha": 0.0, "seed_everything": 0}, {"model.alpha": 0.0, "seed_everything": 1}
    recorded(first, point, "failed", ended=first.started)
    assert first.state(run_key(point, []))[0] == "failed here"  # same invocation: not retried
    # a run whose runner died (a pid that no longer runs on this host) is not "running"
    recorded(first, cut, "running", runner={"host": socket.gethostname(), "pid": 2**22 + 7})
    second = SweepStore(tmp_path, "sweeps/alpha_mnist.yaml", config)  # the user runs the command again
    assert [r["status"] for r in second.records()] == ["failed", "killed"]
    assert second.state(run_key(point, []))[0] == "todo"  # failed earlier: tried again
    assert second.state(run_key(cut, []))[0] == "todo"
    manifest = json.loads(second.manifest.read_text())
    assert [r["params"] for r in manifest["runs"]] == [point, cut]
    assert second.state(run_key(point, ["--trainer.max_epochs=5"]))[1] is None  # another run


def test_a_command_that_always_fails_stops_the_sweep_as_wandb_agent_does(tmp_path, monkeypatch, capsys):
    config = yaml.safe_load((ROOT / "sweeps/alpha_mnist.yaml").read_text())
    config["command"] = ["${env}", "false", "${args}"]  # exits 1 at once, whatever the arguments
    sweep_file = tmp_path / "broken.yaml"
    sweep_file.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("WANDB_AGENT_MAX_INITIAL_FAILURES", "2")
    result = run_sweep(str(sweep_file), parallel=1, runs_dir=str(tmp_path / "runs"))
    assert result["finished"] == 0 and result["failed"] == 2  # not all 18 grid points
    out = capsys.readouterr().out
    assert out.count("FAILED with exit code 1") == 2 and "the first 2 runs all failed" in out
    manifest = json.loads(Path(result["manifest"]).read_text())
    assert [r["command"][1:3] for r in manifest["runs"]] == [["false", "--model.alpha=0.0"]] * 2


def test_run_cap_counts_the_runs_of_earlier_invocations(tmp_path, capsys):
    config = load_sweep(ROOT / "sweeps/alpha_bayes.yaml")
    previous = SweepStore(tmp_path / "runs" / f"sweep-{config['name']}", "sweeps/alpha_bayes.yaml", config)
    for _ in range(config["run_cap"]):
        recorded(previous, {"model.alpha": 1.0, "seed_everything": 0}, "finished")
    result = run_sweep(str(ROOT / "sweeps/alpha_bayes.yaml"), runs_dir=str(tmp_path / "runs"))
    assert result["finished"] == result["failed"] == 0
    assert f"run_cap of {config['run_cap']} runs is reached" in capsys.readouterr().out


# --- runners ----------------------------------------------------------------------------------
def test_two_runners_started_at_once_train_each_grid_point_once(grid):
    command = [sys.executable, "-m", "consistency_vae", "sweep", str(grid["file"]), "--parallel", "2",
               "--runs_dir", str(grid["runs"])]
    env = {**os.environ, "TRAIN_SECONDS": "1.5"}
    procs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(grid["trained"]()) == [f"--a={a}" for a in range(1, 9)], outs  # each exactly once
    records = json.loads((grid["runs"] / "sweep-grid/manifest.json").read_text())["runs"]
    assert len(records) == 8 and {r["status"] for r in records} == {"finished"}
    assert len({r["runner"]["pid"] for r in records}) == 2, outs  # both runners did take part
    assert not list((grid["runs"] / "sweep-grid/claims").iterdir())  # every claim given back
    # the same command once more: everything is finished, nothing trains
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and len(grid["trained"]()) == 8
    assert "0 of 0 runs finished; grid points skipped: {'finished': 8}" in again.stdout


def test_a_point_claimed_by_a_live_runner_is_left_to_it(grid, capsys):
    store = SweepStore(grid["runs"] / "sweep-grid", str(grid["file"]), {})
    other = store.claim_path(run_key({"a": 3}, []))
    other.write_text(json.dumps({"host": "node-elsewhere", "pid": 1}))  # fresh: that node trains it
    result = run_sweep(str(grid["file"]), runs_dir=str(grid["runs"]))
    assert result["finished"] == 7 and result["skipped"] == {"claimed": 1}
    assert "--a=3" not in grid["trained"]()


def test_index_runs_one_grid_point_and_only_once(grid, capsys):
    result = run_sweep(str(grid["file"]), runs_dir=str(grid["runs"]), index=2)
    assert result["finished"] == 1 and grid["trained"]() == ["--a=3"]  # W&B's order: a = 1, 2, 3, ...
    again = run_sweep(str(grid["file"]), runs_dir=str(grid["runs"]), index=2)
    assert again["finished"] == 0 and again["skipped"] == {"finished": 1} and len(grid["trained"]()) == 1
    with pytest.raises(ConfigError, match=r"--index 8: .* has no such grid point; .*--list"):
        run_sweep(str(grid["file"]), runs_dir=str(grid["runs"]), index=8)
    sweep_main([str(grid["file"]), "--list", "--runs_dir", str(grid["runs"])])
    out = capsys.readouterr().out
    assert "   2  finished  a=3" in out and "   0  -         a=1" in out
    assert "8 grid points: sbatch --array=0-7 runs them all" in out


def test_only_restricts_the_grid(grid):
    result = run_sweep(str(grid["file"]), runs_dir=str(grid["runs"]), only={"a": [2, 5]})
    assert result["finished"] == 2 and sorted(grid["trained"]()) == ["--a=2", "--a=5"]
    with pytest.raises(ConfigError, match=r"--only b: not a parameter of this sweep; its parameters are"):
        run_sweep(str(grid["file"]), runs_dir=str(grid["runs"]), only={"b": [1]})


@pytest.mark.parametrize("listing", [[], ["--list"]])
def test_only_values_that_no_grid_point_has_stop_the_command(grid, listing):
    """--only a=2,9 (9 is not in the grid: a typo) trains nothing, nor lists 0 points, but names the
    values the grid has."""
    with pytest.raises(ConfigError, match=r"--only a=9: no grid point of .* has it; its a values are 1,2,3,"):
        sweep_main([str(grid["file"]), "--only", "a=2,9", "--runs_dir", str(grid["runs"]), *listing])
    assert grid["trained"]() == []


def test_a_run_cut_off_with_a_last_checkpoint_resumes_it(grid):
    folder = grid["runs"] / "x_a1" / "version_0"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints/last.ckpt").write_bytes(b"")
    store = SweepStore(grid["runs"] / "sweep-grid", str(grid["file"]), {})
    cut = store.new_record({"a": 1}, run_key({"a": 1}, []), [])
    cut.update(runner={"host": socket.gethostname(), "pid": DEAD_PID}, run_dir=str(folder))
    store.save(cut)  # still "running", but its runner is gone: killed
    store.save({**store.new_record({"a": 1}, run_key({"a": 1}, []), []), "status": "failed",
                "runner": {"host": "elsewhere", "pid": 1}})  # a retry that failed before its folder
    run_sweep(str(grid["file"]), runs_dir=str(grid["runs"]), only={"a": [1, 2]})
    lines = grid["log"].read_text().splitlines()
    assert lines[0].startswith("--a=1 ") and lines[0].endswith("--ckpt_path last")
    assert "--ckpt_path" not in lines[1]
    assert json.loads((grid["runs"] / "sweep-grid/attempts/0003.json").read_text())["resumes"] == "0001"


def test_a_run_cut_off_after_its_last_epoch_counts_as_finished(grid, capsys):
    """Killed in its final test, a run has trained every epoch: `--ckpt_path last` would be
    refused (nothing left to train), so the runner records it as finished instead of failing it
    on every retry."""
    import torch

    folder = grid["runs"] / "x_a1" / "version_0"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_epochs": 2}}))
    torch.save({"loops": {"fit_loop": {"epoch_progress": {"current": {"processed": 2}}}}, "epoch": 1,
                "global_step": 8}, folder / "checkpoints/last.ckpt")
    store = SweepStore(grid["runs"] / "sweep-grid", str(grid["file"]), {})
    cut = store.new_record({"a": 1}, run_key({"a": 1}, []), [])
    store.save({**cut, "run_dir": str(folder), "runner": {"host": socket.gethostname(), "pid": DEAD_PID}})
    result = run_sweep(str(grid["file"]), runs_dir=str(grid["runs"]), only={"a": [1]})
    assert result["finished"] == 1 and grid["trained"]() == []  # nothing ran
    assert store.state(run_key({"a": 1}, []))[1]["completes"] == cut["id"]
    assert "had trained all its epochs (cut off in its final test)" in capsys.readouterr().out


def test_resume_args_pick_only_the_newest_folder_of_the_name(tmp_path):
    def version(n: int) -> Path:
        (tmp_path / f"run/version_{n}/checkpoints").mkdir(parents=True)
        (tmp_path / f"run/version_{n}/checkpoints/last.ckpt").write_bytes(b"")
        return tmp_path / f"run/version_{n}"

    v0 = version(0)
    assert resume_args({"status": "killed", "run_dir": str(v0)}) == ["--ckpt_path", "last"]
    assert resume_args({"status": "finished", "run_dir": str(v0)}) == []
    version(1)  # a newer run of the same name: `last` would resume that one, so start afresh
    assert resume_args({"status": "failed", "run_dir": str(v0)}) == []


def test_the_slurm_array_script_runs_the_task_s_grid_point(grid):
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "4", "PYTHON": sys.executable,
           "RUNS_DIR": str(grid["runs"])}
    done = subprocess.run(["bash", "scripts/sweep_array.sbatch", str(grid["file"])], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert grid["trained"]() == ["--a=5"]
    missing = subprocess.run(["bash", "scripts/sweep_array.sbatch", str(grid["file"])], cwd=ROOT,
                             env={k: v for k, v in env.items() if k != "SLURM_ARRAY_TASK_ID"},
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "sbatch --array=0-N" in missing.stderr


@pytest.mark.slow
def test_a_real_run_cut_off_after_one_epoch_resumes_in_its_own_folder(tmp_path, data_dir):
    """The runner and `fit --ckpt_path last` together: the second attempt continues the first
    attempt's folder from its last.ckpt and trains the missing epoch only."""
    from consistency_vae.reproduction.common import checkpoint_epoch
    from consistency_vae.sweep.sweep_file import build_command, grid_points

    sweep = ROOT / "sweeps/reproduce_constrained_2d.yaml"
    runs, config = tmp_path / "runs", load_sweep(sweep)
    params = grid_points(config)[0]
    # constant: a cosine schedule spans the run's max_epochs, so the stand-in cut below (a 1-epoch
    # run resumed as a 2-epoch one) would be refused as another schedule (test_lr_schedule.py)
    extra = [f"--data.data_dir={data_dir}", "--data.subset=512", "--trainer.max_epochs=2",
             "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2",
             "--model.lr_schedule=constant"]
    first = [*build_command(config, params), f"--trainer.default_root_dir={runs}", *extra,
             "--trainer.max_epochs=1"]  # stands in for a run killed after its first epoch
    done = subprocess.run(first, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    folder = runs / "mnist_constrained_kl1.0_alpha1.0_seed0/version_0"
    store = SweepStore(runs / "sweep-reproduce_constrained_2d", str(sweep), config)
    cut = store.new_record(params, run_key(params, extra), extra)
    store.save({**cut, "run_dir": str(folder), "runner": {"host": socket.gethostname(), "pid": DEAD_PID}})
    result = run_sweep(str(sweep), runs_dir=str(runs), extra_args=extra, index=0)
    assert result["finished"] == 1
    (second,) = [r for r in store.records() if r["id"] != cut["id"]]
    assert second["command"][-2:] == ["--ckpt_path", "last"] and Path(second["run_dir"]) == folder
    assert checkpoint_epoch(folder / "checkpoints/last.ckpt") == 1  # epochs 0 and 1: both done
    assert not (folder.parent / "version_1").exists()
