"""A pack refuses, before any work, every trainer setting and callback that its own loop would not
honour (consistency_vae/packed/packable.py): each is named, with the fix. The member is built by
its real ``fit`` command line (member_run.member_cli), as a pack builds it."""

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from consistency_vae import callbacks
from consistency_vae.errors import ConfigError
from consistency_vae.packed import packable
from consistency_vae.packed.member_run import member_cli
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def checked(tmp_path, *flags: str, loggers: bool = False) -> None:
    """packable.check of the member built by ``fit --config configs/mnist.yaml FLAGS``; without its
    loggers unless ``loggers``."""
    cli = member_cli(["--config", str(ROOT / "configs/mnist.yaml"), f"--trainer.default_root_dir={tmp_path}",
                      "--trainer.enable_progress_bar=false", *([] if loggers else ["--trainer.logger=false"]),
                      *flags])
    packable.check(cli.trainer, cli.config["fit"])


@pytest.mark.parametrize("flags", [
    (),  # configs/mnist.yaml as the sweeps train it
    ("--trainer.callbacks+=consistency_vae.timing.EpochTimer",),  # what gpu_check adds
    ("--trainer.max_epochs=3", "--trainer.enable_progress_bar=true", "--trainer.log_every_n_steps=10"),
    ("--trainer.precision=32-true", "--trainer.limit_train_batches=1.0", "--trainer.gradient_clip_val=0"),
])
def test_what_a_pack_honours_passes(tmp_path, flags):
    checked(tmp_path, *flags)


@pytest.mark.parametrize(("flag", "says"), [
    ("--trainer.gradient_clip_val=1", "trainer.gradient_clip_val=1.0: a pack would drop it"),
    ("--trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches=2"),
    ("--trainer.precision=bf16-mixed", "trainer.precision='bf16-mixed'"),
    ("--trainer.limit_train_batches=0.5", "trainer.limit_train_batches=0.5"),
    ("--trainer.max_steps=10", "trainer.max_steps=10"),
    ("--trainer.max_time=00:00:01:00", "trainer.max_time='00:00:01:00'"),
    ("--trainer.check_val_every_n_epoch=2", "trainer.check_val_every_n_epoch=2"),
    ("--trainer.fast_dev_run=true", "trainer.fast_dev_run=True"),
    ("--trainer.profiler=simple", "trainer.profiler='simple'"),  # its report: a file a pack does not write
    ("--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor", "does not run "
     "lightning.pytorch.callbacks.lr_monitor.LearningRateMonitor"),
])
def test_a_setting_a_pack_would_drop_is_refused_naming_it(tmp_path, flag, says):
    with pytest.raises(ConfigError, match="train this run alone \\(--pack 1\\)") as err:
        checked(tmp_path, flag)
    assert says in str(err.value)


def test_more_than_one_device_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="= 2: a pack trains on one device"):
        checked(tmp_path, "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu")


@pytest.mark.parametrize(("callback", "says"), [
    (callbacks.LatentScatter(every_n_epochs=5), "LatentScatter(every_n_epochs=5): a pack draws figures at "
                                                "the end"),
    (ModelCheckpoint(monitor="val/elbo", mode="max"), "ModelCheckpoint(monitor='val/elbo')"),
    (ModelCheckpoint(monitor="val/selection", save_top_k=3, save_last=True), "(save_top_k=3)"),
    (ModelCheckpoint(monitor="val/selection", save_last=False), "(save_last=False)"),
    (ModelCheckpoint(monitor="val/selection", save_last=True, every_n_epochs=2), "(every_n_epochs=2)"),
    (ModelCheckpoint(monitor="val/selection", save_last=True, every_n_train_steps=100),
     "(every_n_train_steps=100)"),
])
def test_a_callback_a_pack_would_not_keep_as_set_is_refused(callback, says):
    trainer = Trainer(callbacks=[callback], logger=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match="\\(--pack 1\\)") as err:
        packable.check(trainer, {"trainer": {}})
    assert says in str(err.value)


def test_the_checkpoint_of_the_configs_passes():
    keep = ModelCheckpoint(monitor="val/selection", mode="min", save_last=True)
    packable.check(Trainer(callbacks=[keep, callbacks.LatentScatter()], logger=False), {"trainer": {}})


def test_uploading_checkpoints_to_wandb_is_refused(tmp_path, monkeypatch):
    """configs/mnist.yaml's WandbLogger takes log_model from WANDB_LOG_MODEL: a solo run uploads its
    checkpoints as artifacts; a pack writes them itself, and would upload none."""
    monkeypatch.setenv("WANDB_LOG_MODEL", "true")
    with pytest.raises(ConfigError, match="WandbLogger\\(log_model=True\\).*uploads none as W&B artifacts"):
        checked(tmp_path, loggers=True)
