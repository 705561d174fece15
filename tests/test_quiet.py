"""A run's output is the user's: no library tips, deprecations or W&B summaries, result last."""

import os
import subprocess
import sys

import pytest

from tests import cli_runs

NOISE = ("litlogger", "anonymous setting", "LeafSpec", "Run history", "Run summary", "register_new_resolver")


@pytest.mark.slow
def test_fit_output_ends_with_the_result_and_holds_no_library_noise(tmp_path, data_dir):
    env = {k: v for k, v in cli_runs.ENV.items() if k != "WANDB_SILENT"} | {"WANDB_MODE": "offline"}
    done = subprocess.run(
        [sys.executable, "-m", "consistency_vae", "fit", "--config", cli_runs.BASE,
         f"--data.data_dir={data_dir}", "--data.subset=512", "--trainer.max_epochs=1",
         "--trainer.enable_progress_bar=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    for noise in NOISE:
        assert noise not in out, noise
    # the model summary counts real FLOPs (it showed a column of zeros without an example input)
    (total,) = [line for line in out.splitlines() if line.rstrip().endswith("Total Flops")]
    assert total.split()[0] not in ("0", "0.0")
    # the last lines are the result and where it went, W&B included
    last = [line for line in done.stdout.splitlines() if line.strip()][-3:]
    assert last[0].startswith("Done. Best checkpoint: ") and "test ELBO" in last[1], last
    assert last[2].startswith("  W&B (offline): "), last
    assert os.path.isdir(tmp_path / last[2].split()[2].rstrip(";"))



def test_a_disabled_wandb_run_gets_no_wandb_line(tmp_path, monkeypatch):
    """WANDB_MODE=disabled: no "W&B: None" line (offline: the fit test above checks its line)."""
    from lightning.pytorch.loggers import WandbLogger

    from consistency_vae.quiet import wandb_run_line

    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = WandbLogger(project="consistency-vae", save_dir=str(tmp_path))
    logger.experiment  # noqa: B018 - starts the (no-op) run, as fit does
    assert wandb_run_line([logger]) is None


@pytest.mark.slow
def test_without_a_terminal_fit_prints_a_line_per_epoch_and_a_resume_no_deletion_notice(tmp_path, data_dir):
    # cli_runs.run sends stdout to a file, as `make train > log` does: a progress bar there was
    # 2.4 MB of carriage-return redraws for 25 epochs
    fit = ["fit", "--config", cli_runs.BASE, f"--data.data_dir={data_dir}", "--data.subset=512"]
    code, log = cli_runs.run(tmp_path, *fit, "--trainer.max_epochs=2")
    assert code == 0, log[-3000:]
    assert "\r" not in log and "it/s" not in log
    lines = [line for line in log.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all("val KL(z'||z)" in line and line.endswith(" s)") for line in lines)
    # a resume keeps the earlier attempt's files and says so; Lightning's "will be deleted" is not true
    code, log = cli_runs.run(tmp_path, *fit, "--trainer.max_epochs=3", "--ckpt_path", "last")
    assert code == 0, log[-3000:]
    assert "kept the earlier attempt's metrics.attempt1.csv" in log
    assert "will be deleted" not in log
    assert [line.split(":")[0] for line in log.splitlines() if line.startswith("epoch ")] == ["epoch 3/3"]


@pytest.mark.parametrize("argv, hint", [
    (["fit", "--config", "c.yaml"], "continue with the same command plus --ckpt_path last"),
    (["fit", "--ckpt_path", "last"], "continue with the same command (its --ckpt_path last)"),
    (["fit", "--ckpt_path=runs/a/last.ckpt"],
     "continue with the same command, --ckpt_path last in place of --ckpt_path runs/a/last.ckpt"),
])
def test_the_resume_hint_fits_the_command_that_was_stopped(argv, hint):
    from consistency_vae.cli_help import resume_hint

    assert resume_hint(argv) == hint
