"""scripts/gpu_check.py on the CPU: a command past its timeout goes with its children, and the
``pack`` step's dry run (``--accelerator cpu --quick --steps pack``) writes its rows (the real one
runs on a GPU: docs/scaling.md, "On a GPU")."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # definitions only: main() runs under __main__
    return module


def _alive(pid: int) -> bool:
    """Whether pid runs (a zombie that nobody has reaped yet does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_a_command_past_its_timeout_is_killed_with_its_children(tmp_path):
    # a sweep runner's pack process is its child: a timeout that killed the runner alone would
    # leave the pack training on the GPU while the next step is timed
    pid_file = tmp_path / "grandchild.pid"
    parent = ("import subprocess, sys, time; "
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    rc, wall = _gpu_check().run([sys.executable, "-c", parent], tmp_path / "log", timeout=5)
    assert rc == 124 and wall < 60
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10  # SIGKILL is delivered at once; its reaping may take a moment
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild)


def test_pack_is_a_default_step():
    # main()'s --steps default, read from the source: running main() here would start every step
    assert '"tests,bench,precision,run,pack,parallel,placement"' in SCRIPT.read_text()


@pytest.mark.slow  # ~4.5 minutes on the shared 2-core CPU: 20 packed runs, 2 evaluations, 2 benches
def test_the_pack_steps_dry_run_on_the_cpu_writes_its_rows(tmp_path, data_dir):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), "--accelerator", "cpu", "--quick", "--steps", "pack",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {row["step"]: row for row in json.loads((out / "gpu_check.json").read_text())}
    assert list(rows) == ["torch", "packed reproduction (20 runs, one pack)",
                          "evaluate, 2 packed runs' last.ckpt", "bench --pack 1", "bench --pack 4"]

    packed = rows["packed reproduction (20 runs, one pack)"]
    assert packed["rc"] == 0 and packed["runs_finished"] == 20 and len(packed["packs"]) == 1
    assert packed["s_per_run"] == pytest.approx(packed["wall_s"] / 20, abs=0.01)  # both rounded
    first = out / packed["first_run"]
    assert (first / "checkpoints" / "last.ckpt").is_file()
    assert 0 <= packed["test_kl_consistency"] < 100 and -600 < packed["test_elbo"] < 0

    evaluated = rows["evaluate, 2 packed runs' last.ckpt"]
    assert evaluated["rcs"] == [0, 0] and all(s > 0 for s in evaluated["wall_s"])
    assert evaluated["s_per_checkpoint"] == pytest.approx(sum(evaluated["wall_s"]) / 2, abs=0.06)
    assert evaluated["alpha"] == 0.0  # the first run of the grid: alpha 0, seed 0
    assert 0 <= evaluated["kl_consistency"] < 100 and evaluated["elbo"] < 0

    for n in (1, 4):
        bench = rows[f"bench --pack {n}"]
        assert bench["rc"] == 0 and bench["device"] == "cpu" and bench["workers"] == 2
        assert bench["solo_model_steps_s"] > 0 and bench["packed_model_steps_s"] > 0
        # rates rounded to 0.1, ratio to 0.001: their quotient agrees to that rounding
        ratio = bench["packed_model_steps_s"] / bench["solo_model_steps_s"]
        assert bench["ratio"] == pytest.approx(ratio, rel=0.01)
