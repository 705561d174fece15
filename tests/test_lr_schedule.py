"""``model.lr_schedule``: constant (the paper's Adam 1e-3), or cosine annealing to 0 over the run's
optimizer steps, which a resumed run continues where it stopped."""

import math

import pytest
import torch
from lightning import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from consistency_vae.datamodule import MNISTDataModule
from consistency_vae.errors import ConfigError
from consistency_vae.model import ConsistencyVAE

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
BATCHES = 5  # optimizer steps per epoch


class RecordLR(Callback):
    """The learning rate each optimizer step used, by global step."""

    def __init__(self):
        self.lr: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lr[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


class StopAfterFirstEpoch(Callback):
    """An interrupted run: the first epoch, then stop (a checkpoint of that epoch is kept)."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


def fit(tmp_path, data_dir, schedule: str, epochs: int = 2, ckpt_path=None, callbacks=()) -> RecordLR:
    recorder = RecordLR()
    trainer = Trainer(max_epochs=epochs, limit_train_batches=BATCHES, limit_val_batches=0, accelerator="cpu",
                      logger=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[recorder, *callbacks], default_root_dir=tmp_path)
    torch.manual_seed(0)
    trainer.fit(ConsistencyVAE(lr=1e-3, lr_schedule=schedule),
                datamodule=MNISTDataModule(data_dir=str(data_dir), subset=1024), ckpt_path=ckpt_path)
    return recorder


def test_cosine_follows_its_closed_form_and_ends_at_zero(tmp_path, data_dir):
    lr = fit(tmp_path, data_dir, "cosine").lr
    steps = 2 * BATCHES
    assert sorted(lr) == list(range(steps))
    for k, value in lr.items():  # the closed form of cosine annealing from 1e-3 to 0 over all steps
        assert value == pytest.approx(1e-3 * (1 + math.cos(math.pi * k / steps)) / 2, rel=1e-6)
    assert lr[steps - 1] < 1e-3 * 0.03  # the last step moves the weights by under 3% of the first's


def test_constant_keeps_the_learning_rate(tmp_path, data_dir):
    assert set(fit(tmp_path, data_dir, "constant").lr.values()) == {1e-3}


def test_a_resumed_cosine_run_continues_its_schedule(tmp_path, data_dir):
    unbroken = fit(tmp_path / "a", data_dir, "cosine").lr
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    fit(tmp_path / "b", data_dir, "cosine", callbacks=[saver, StopAfterFirstEpoch()])
    resumed = fit(tmp_path / "c", data_dir, "cosine", ckpt_path=tmp_path / "ckpt/epoch=0.ckpt").lr
    assert resumed == {k: unbroken[k] for k in range(BATCHES, 2 * BATCHES)}


def test_resuming_a_cosine_run_with_another_length_is_refused(tmp_path, data_dir):
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    fit(tmp_path / "b", data_dir, "cosine", callbacks=[saver, StopAfterFirstEpoch()])
    with pytest.raises(ConfigError, match="spans 10 optimizer steps, this run 15: resume with the "
                                          "trainer.max_epochs it started with"):
        fit(tmp_path / "c", data_dir, "cosine", epochs=3, ckpt_path=tmp_path / "ckpt/epoch=0.ckpt")


def test_an_unknown_schedule_names_the_value_and_the_choices():
    with pytest.raises(ConfigError, match="model.lr_schedule must be 'constant' or 'cosine', got 'linear'"):
        ConsistencyVAE(lr_schedule="linear")
