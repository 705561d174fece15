"""scripts/gpu_check.py on the CPU: a command past its timeout goes with its children, and the
``pack`` step's dry run (``--accelerator cpu --quick --steps pack``) writes its rows (the real one
runs on a GPU: docs/scaling.md, "On a GPU")."""

import importlib.util
import json
import re
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


SLEEPER = ("import subprocess, sys, time; "
           "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
           "open(sys.argv[1], 'w').write(str(p.pid)); time.sleep(120)")


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + 20  # SIGKILL is delivered at once; reaping may take a moment
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


def test_a_command_past_its_timeout_is_killed_with_its_children(tmp_path):
    # a sweep runner's pack process is its child: a timeout that killed the runner alone would
    # leave the pack training on the GPU while the next step is timed
    pid_file = tmp_path / "grandchild.pid"
    rc, wall = _gpu_check().run([sys.executable, "-c", SLEEPER, str(pid_file)], tmp_path / "log", timeout=5)
    assert rc == 124 and wall < 60
    assert _gone(int(pid_file.read_text()))


def test_a_stopped_run_stops_the_command_it_waits_on(tmp_path):
    # the script under a timeout (the dry run below): its own commands are in their own process
    # groups, and go because the SIGTERM to it stops them before its SIGKILL
    pid_file = tmp_path / "grandchild.pid"
    inner = tmp_path / "inner.py"
    inner.write_text("import importlib.util, sys\n"
                     f"spec = importlib.util.spec_from_file_location('g', {str(SCRIPT)!r})\n"
                     "g = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(g)\n"
                     "g.stop_on_sigterm()\n"
                     f"g.run([sys.executable, '-c', {SLEEPER!r}, {str(pid_file)!r}], "
                     f"g.Path({str(tmp_path / 'inner.log')!r}), timeout=120)\n")
    rc, wall = _gpu_check().run([sys.executable, str(inner)], tmp_path / "log", timeout=8)
    assert rc == 124 and wall < 60, (tmp_path / "log").read_text()
    assert _gone(int(pid_file.read_text()))


def test_pack_is_a_default_step():
    # main()'s --steps default, read from the source: running main() here would start every step
    assert '"tests,bench,precision,run,pack,parallel,placement"' in SCRIPT.read_text()


def test_every_file_of_gpu_tests_is_in_the_scripts_test_step():
    # step 1 names its files (the rest of the suite has no GPU test): a new file of them must be there
    marked = re.compile(r"^(@pytest\.mark\.gpu\b|pytestmark = .*pytest\.mark\.gpu\b)", re.M)
    files = [f.name for f in (ROOT / "tests").glob("test_*.py") if marked.search(f.read_text())]
    assert files and all(f"tests/{name}" in SCRIPT.read_text() for name in files), files


@pytest.mark.slow  # the path, not the numbers: 4 packed runs of 1 epoch, 1 small evaluation
def test_the_pack_steps_dry_run_on_the_cpu_writes_its_rows(tmp_path, data_dir):
    out = tmp_path / "out"
    # under the script's own run(): past the timeout it and every command it started are stopped
    cmd = [sys.executable, str(SCRIPT), "--accelerator", "cpu", "--quick", "--steps", "pack",
           "--out", str(out)]
    rc, _ = _gpu_check().run(cmd, tmp_path / "gpu_check.log", timeout=1500,
                             env={"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"})
    assert rc == 0, (tmp_path / "gpu_check.log").read_text()[-3000:]
    rows = {row["step"]: row for row in json.loads((out / "gpu_check.json").read_text())}
    assert list(rows) == ["torch", "packed reproduction (4 runs, one pack)",
                          "evaluate, 1 packed runs' last.ckpt", "evaluate, 2 checkpoints at once"]

    packed = rows["packed reproduction (4 runs, one pack)"]
    assert packed["rc"] == 0 and packed["runs_finished"] == 4 and len(packed["packs"]) == 1
    # s_per_run is round(wall / 4, 2), wall_s round(wall, 1): they differ by up to 0.05 / 4 + 0.005
    assert packed["s_per_run"] == pytest.approx(packed["wall_s"] / 4, abs=0.0175)
    first = out / packed["first_run"]
    assert (first / "checkpoints" / "last.ckpt").is_file()
    assert 0 <= packed["test_kl_consistency"] < 100 and -600 < packed["test_elbo"] < 0

    evaluated = rows["evaluate, 1 packed runs' last.ckpt"]
    assert evaluated["rcs"] == [0] and all(s > 0 for s in evaluated["wall_s"])
    assert evaluated["s_per_checkpoint"] == pytest.approx(evaluated["wall_s"][0], abs=0.06)
    assert evaluated["alpha"] == 0.0  # the first run of the grid: alpha 0, seed 0
    assert 0 <= evaluated["kl_consistency"] < 100 and evaluated["elbo"] < 0
    assert {"load", "loss_terms", "iwae", "inference_gaps"} <= evaluated["timings"].keys()  # where it went
    at_once = rows["evaluate, 2 checkpoints at once"]
    assert at_once["rcs"] == [0, 0] and at_once["s_per_checkpoint"] > 0
    assert (out / "eval_at_once1" / "metrics.json").is_file()

