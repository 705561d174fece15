"""Helpers for tests that run the CLI: a logger list with only the CSVLogger, the test/* metrics
of a run, and the CLI as a subprocess (for kills, signals and DDP, which need a real process)."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

BASE = str(ROOT / "configs/mnist.yaml")
RUN_NAME = "mnist_alpha1.0_seed0"
# One thread per process: tiny models gain nothing from more, and results must not depend on it.
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
       "PYTHONUNBUFFERED": "1"}
# CLI processes of one thread that a test module runs at once (test_docs_commands, test_sweeps):
# two fill a 2-core machine; more would only wait on each other, with about a GB of memory each
AT_ONCE = min(2, os.cpu_count() or 1)


def csv_only(version: int | None = None) -> str:
    """--trainer.logger with only the CSVLogger (a flag on the list would reach its last logger)."""
    init = {"save_dir": "runs", "name": RUN_NAME, "version": version}
    return "--trainer.logger=" + json.dumps([{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                             "init_args": init}])


def read_test_metrics(path: Path) -> dict[str, float]:
    """The test/* values of the last row of a metrics.csv that holds test/loss (the final test)."""
    rows = [row for row in csv.DictReader(path.open()) if row.get("test/loss")]
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("test/") and v}


def start(cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``python -m consistency_vae ARGS`` in cwd, stdout and stderr together in cwd/cli.log;
    ``env`` adds variables to ENV."""
    log = open(cwd / "cli.log", "a")  # noqa: SIM115 - the child writes to it until it exits
    # its own process group: a DDP run's worker processes end with it (see run). SIGINT as in a
    # terminal: under a shell's background job (`bash .ci/run &`) it is inherited ignored, and a
    # Python started so never turns Ctrl-C into KeyboardInterrupt
    return subprocess.Popen([sys.executable, "-m", "consistency_vae", *args], cwd=cwd,
                            env={**ENV, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=_default_sigint)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(cwd: Path, *args: str, timeout: float = 300, env: dict | None = None) -> tuple[int, str]:
    """Run the CLI to the end; return (exit code, everything it printed)."""
    cwd.mkdir(parents=True, exist_ok=True)
    before = (cwd / "cli.log").stat().st_size if (cwd / "cli.log").exists() else 0
    process = start(cwd, *args, env=env)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the group this test started, DDP workers included
        process.wait()
        raise
    return code, (cwd / "cli.log").read_text()[before:]
