"""--data.binarize: static (one fixed Bernoulli draw per split) and dynamic (a fresh draw per step)."""

import pytest
import torch
from lightning import Callback, Trainer

from consistency_vae.datamodule import MNISTDataModule
from consistency_vae.model import ConsistencyVAE


def setup(data_dir, binarize: str) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=str(data_dir), subset=512, binarize=binarize)
    dm.setup("fit")
    return dm


def is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def test_static_draws_each_split_once_with_the_grey_levels_as_probabilities(data_dir):
    grey, static = setup(data_dir, "none"), setup(data_dir, "static")
    for split in ("train_set", "val_set", "test_set"):
        p, x = getattr(grey, split).images, getattr(static, split).images
        assert not is_binary(p) and is_binary(x)
        # E[x] = p: over 512 x 784 pixels the mean of the draws is within 3e-3 of the mean grey
        # level (its standard deviation is below sqrt(0.25 / 401408) = 8e-4)
        assert float(x.mean()) == pytest.approx(float(p.mean()), abs=3e-3)
        assert bool((x[p == 0] == 0).all()) and bool((x[p == 1] == 1).all())
    again = setup(data_dir, "static")  # fixed by split_seed: the same draw in every run
    assert torch.equal(again.test_set.images, static.test_set.images)


class RecordBatches(Callback):
    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch[0].clone())


def test_dynamic_redraws_every_training_batch_and_fixes_the_evaluation_splits(data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), subset=512, batch_size=512, binarize="dynamic")
    record = RecordBatches()
    trainer = Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=True, limit_val_batches=0, accelerator="cpu", callbacks=[record])
    trainer.fit(ConsistencyVAE(), datamodule=dm)  # the summary's example input is no (x, y) batch
    first, second = record.batches  # one batch per epoch: the same 512 images, in another order
    assert is_binary(first) and is_binary(second)
    assert not is_binary(dm.train_set.images)  # the grey levels stay, each step draws from them
    assert is_binary(dm.val_set.images) and is_binary(dm.test_set.images)
    same_images = torch.sort(first.flatten(1).sum(1)).values, torch.sort(second.flatten(1).sum(1)).values
    assert not torch.equal(*same_images)  # a fresh draw, not the same binary images reshuffled
    static = setup(data_dir, "static")  # the evaluation splits: the same fixed draw as static
    assert torch.equal(dm.test_set.images, static.test_set.images)
