"""Each run folder gets a training-curves figure, read from the run's metrics record, sent to W&B."""

import matplotlib.image as mpimg
import pytest

from consistency_vae.cli import cli_main
from consistency_vae.curves import curves_figure, epoch_curves
from tests.cli_runs import BASE, RUN_NAME


def test_curves_are_per_epoch_per_stage_for_every_logged_key():
    rows = [
        {"epoch": "0", "step": "1", "train/loss": "9.0"},  # a per-step value: the epoch mean wins
        {"epoch": "0", "step": "3", "val/loss": "7.0", "val/selection": "7.5"},
        {"epoch": "0", "step": "3", "train/loss_epoch": "8.0", "train/alpha_epoch": "1.0",
         "test/kl_consistency": "0.5", "train/constraint": "0.7"},
        {"epoch": "1", "step": "7", "val/loss": "6.0", "val/selection": "6.5"},
        {"epoch": "1", "step": "7", "train/loss_epoch": "5.0", "train/alpha_epoch": "1.0",
         "test/kl_consistency": "0.25", "time/train_epoch_s": "3.0"},
    ]
    curves = epoch_curves(rows)
    assert curves["loss"] == {"train": {0: 8.0, 1: 5.0}, "val": {0: 7.0, 1: 6.0}}
    assert curves["kl_consistency"] == {"test": {0: 0.5, 1: 0.25}}
    assert curves["selection"] == {"val": {0: 7.5, 1: 6.5}}  # a key no one told it about
    assert curves["constraint"] == {"train": {0: 0.7}}  # logged per step only: its last value
    assert "alpha" not in curves and "train_epoch_s" not in curves  # a fixed alpha; not a stage
    moving = epoch_curves([{**r, "train/alpha_epoch": str(i)} for i, r in enumerate(rows)
                           if "train/alpha_epoch" in r])
    assert moving["alpha"] == {"train": {0: 2.0, 1: 4.0}}  # constrained mode: alpha gets a panel
    fig = curves_figure(curves)
    titles = [ax.get_title().split(":")[0] for ax in fig.axes]
    assert titles[:2] == ["loss", "kl_consistency"] and "constraint" in titles
    assert "selection" not in titles  # val/selection is the checkpoint's ranking, not drawn
    assert fig.axes[titles.index("kl_consistency")].get_yscale() == "log"


@pytest.mark.slow
def test_a_run_folder_gets_the_figure_and_wandb_the_image(tmp_path, monkeypatch, data_dir):
    import wandb

    from tests.test_wandb import read_offline_run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb.teardown()
    cli_main(["fit", "--config", BASE, f"--data.data_dir={data_dir}", "--data.subset=512",
              "--trainer.max_epochs=2", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
              "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false"])
    wandb.teardown()
    png = tmp_path / "runs" / RUN_NAME / "version_0/figures/training_curves_epoch02.png"  # epoch 2 of 2
    image = mpimg.imread(png)
    assert image.ndim == 3 and image.std() > 0.01  # a real picture
    (run_dir,) = (tmp_path / "runs/wandb").glob("offline-run-*")
    logged = {k for row in read_offline_run(run_dir)["history"] for k in row}
    assert "figures/training_curves" in logged
