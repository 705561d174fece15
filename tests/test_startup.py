"""Commands that need no model start without torch and Lightning (issue 21, section 2): importing
them costs seconds (about 4.7 s on a quiet 2-core machine), which `runs`, `sweep-report`, `data`
and the project commands' --help should not pay. Each command runs in a fresh interpreter, which
reports at exit which of the heavy libraries it had imported: an assertion on imports, not on time."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

HEAVY = ("torch", "lightning", "torchmetrics", "torchvision")
PROBE = """import atexit, json, sys
loaded = lambda: [m for m in {heavy} if m in sys.modules]
atexit.register(lambda: sys.stderr.write("\\nIMPORTED " + json.dumps(loaded()) + "\\n"))
from consistency_vae.cli import cli_main
cli_main(sys.argv[1:])
"""
CKPT = ROOT / "tests/fixtures/mnist_alpha1_hidden32_v0.1.ckpt"  # a real Lightning checkpoint


def run(*argv: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``consistency-vae ARGV`` in a fresh interpreter -> (the process, the heavy modules it imported)."""
    proc = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"})
    line = next((x for x in proc.stderr.splitlines() if x.startswith("IMPORTED ")), None)
    assert line is not None, proc.stderr[-2000:]
    return proc, json.loads(line.removeprefix("IMPORTED "))


@pytest.mark.parametrize("argv", [
    ["--help"], ["no-such-command"],
    *([name, "--help"] for name in ("data", "runs", "sweep", "sweep-report", "reproduce", "bench",
                                    "evaluate", "compare")),
])
def test_help_and_mistakes_import_no_torch(argv):
    proc, imported = run(*argv)
    assert imported == [], f"consistency-vae {' '.join(argv)} imported {imported}"
    assert proc.returncode == (0 if "--help" in argv else 1), proc.stderr[-2000:]


def test_data_when_verified_imports_no_torch(data_dir):
    proc, imported = run("data", "--data_dir", str(data_dir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mnist: 4 files verified" in proc.stdout and imported == []


def test_runs_reads_epochs_from_last_ckpt_without_torch(tmp_path):
    """The epochs come from last.ckpt (status.json here has none), read by ckpt_peek, not torch."""
    import torch

    folder = tmp_path / "mnist_alpha1.0_seed0" / "version_0"
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copy(CKPT, folder / "checkpoints" / "last.ckpt")
    config = {"trainer": {"max_epochs": 5}, "data": {"dataset": "mnist"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "status.json").write_text(json.dumps({"status": "running"}))
    proc, imported = run("runs", str(tmp_path), "--csv")
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = torch.load(CKPT, map_location="cpu", weights_only=False)
    expected = saved["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]
    (row,) = csv.DictReader(io.StringIO(proc.stdout))
    assert int(row["epochs"]) == expected and imported == []


def test_a_sweep_report_mistake_imports_no_torch(tmp_path):
    proc, imported = run("sweep-report", str(tmp_path), "--output", str(tmp_path / "out"))
    assert proc.returncode == 1 and "no finished runs" in proc.stderr and imported == []


def test_fit_still_reaches_lightning():
    """The lazy dispatch still runs LightningCLI: a typo in a key is its one-line parse error."""
    proc, imported = run("fit", "--config", "configs/mnist.yaml", "--trainer.max_epoch=1")
    assert proc.returncode == 2 and "did you mean --trainer.max_epochs?" in proc.stderr
    assert "lightning" in imported
