"""A run killed partway resumes to the same result; SIGTERM leaves a checkpoint of the current step.

Real processes on real MNIST (1000 images: 7 training batches per epoch), the default config. An
unbroken run is the reference: a resumed run must end with the same weights, bit for bit (CPU,
one thread), and the same test metrics.
"""

import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from lightning import Callback

from tests.cli_runs import BASE, RUN_NAME, read_test_metrics, run, start

EPOCHS = 3


class Pause(Callback):
    """Hold the run at the start of epoch ``at_epoch`` or after step ``at_step``, writing ``marker``,
    until a signal arrives (or ``seconds`` pass): a fixed moment for the test to kill it."""

    def __init__(self, marker: str, at_epoch: int = -1, at_step: int = -1, seconds: float = 120):
        self.marker, self.at_epoch, self.at_step, self.seconds = marker, at_epoch, at_step, seconds

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.at_epoch:
            self._hold(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            self._hold(trainer)

    def _hold(self, trainer) -> None:
        Path(self.marker).write_text(str(trainer.global_step))
        deadline = time.monotonic() + self.seconds
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)


def fit_args(data_dir: Path, *extra: str) -> list[str]:
    return ["fit", "--config", BASE, "--data.data_dir", str(data_dir), "--data.subset=1000",
            "--trainer.enable_progress_bar=false", f"--trainer.max_epochs={EPOCHS}", *extra]


def pause_args(marker: Path, **where: int) -> list[str]:
    return ["--trainer.callbacks+=tests.test_resume.Pause", f"--trainer.callbacks.init_args.marker={marker}",
            *(f"--trainer.callbacks.init_args.{k}={v}" for k, v in where.items())]


def wait_for(path: Path, process, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended (exit {process.returncode}) before {path.name}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.1)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory, data_dir) -> Path:
    """The run folder of the same fit, never interrupted."""
    cwd = tmp_path_factory.mktemp("unbroken")
    code, log = run(cwd, *fit_args(data_dir))
    assert code == 0, log
    return cwd / "runs" / RUN_NAME / "version_0"


def assert_same_result(resumed: Path, unbroken: Path) -> None:
    a, b = load(unbroken / "checkpoints/last.ckpt"), load(resumed / "checkpoints/last.ckpt")
    assert a["global_step"] == b["global_step"] == EPOCHS * 7
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, equal_nan=True)
    expected = read_test_metrics(unbroken / "metrics.csv")
    assert {"test/elbo", "test/kl_consistency", "test/loss"} <= set(expected)
    # the same weights, bit for bit, through the same computation on the same machine: equal
    assert read_test_metrics(resumed / "metrics.csv") == expected


@pytest.mark.slow
def test_sigkill_then_ckpt_path_last_gives_the_uninterrupted_result(tmp_path, data_dir, unbroken):
    # Killed at the start of epoch 2, after the checkpoint of epoch 1: SIGKILL, no chance to save.
    broken = tmp_path / "broken"
    broken.mkdir()
    process = start(broken, *fit_args(data_dir, *pause_args(broken / "paused", at_epoch=2)))
    wait_for(broken / "paused", process)
    last = broken / "runs" / RUN_NAME / "version_0/checkpoints/last.ckpt"
    assert load(last)["epoch"] == 1  # readable while the run lives: it is only ever replaced whole
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL

    code, log = run(broken, *fit_args(data_dir, "--ckpt_path", "last"))
    assert code == 0, log
    assert f"resuming from runs/{RUN_NAME}/version_0/checkpoints/last.ckpt" in log
    resumed = broken / "runs" / RUN_NAME / "version_0"
    assert not (broken / "runs" / RUN_NAME / "version_1").exists()  # the same folder, no new one
    assert (resumed / "metrics.attempt1.csv").is_file()  # the killed attempt's log is kept
    assert_same_result(resumed, unbroken)


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_the_current_step_and_resumes_exactly(tmp_path, data_dir, unbroken):
    process = start(tmp_path, *fit_args(data_dir, *pause_args(tmp_path / "paused", at_step=10)))
    wait_for(tmp_path / "paused", process)
    os.kill(process.pid, signal.SIGTERM)  # what a preempting scheduler sends
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    log = (tmp_path / "cli.log").read_text()
    assert "SIGTERM at epoch 1, global step 10: checkpoint" in log
    assert "stopped by SIGTERM; continue with the same command plus --ckpt_path last" in log

    folder = tmp_path / "runs" / RUN_NAME / "version_0"
    saved = load(folder / "checkpoints/last.ckpt")
    assert (saved["epoch"], saved["global_step"]) == (1, 10)  # mid-epoch: the state at the signal
    assert not list(folder.glob("checkpoints/*.partial"))

    code, log = run(tmp_path, *fit_args(data_dir, "--ckpt_path", "last",
                                        "--trainer.enable_progress_bar=true"))
    assert code == 0, log
    # the loader skipped the 3 batches of epoch 1 trained before the signal
    assert_same_result(folder, unbroken)
    # the resumed epoch's bar knows its epoch and total (it read "Training: 4/?")
    bar = log.replace("\r", "\n")
    assert re.search(r"^Epoch 1: +\d+%\|.*\| \d+/\d+ ", bar, re.MULTILINE), bar[-2000:]
    assert not re.search(r"^Training: .*\| [1-9]\d*/\?", bar, re.MULTILINE), bar[-2000:]
