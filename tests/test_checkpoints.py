"""Checkpoints, fast: a kill during a save leaves the previous last.ckpt whole, non-finite weights
are never written, last.ckpt is always the last epoch, and the training loader resumes mid-epoch.
(The real kills and resumes, in subprocesses: test_resume.py; the NaN stop through the CLI:
test_reliability.py.)"""

import math
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, DistributedSampler

from consistency_vae.checkpointing import AtomicModelCheckpoint, NonFiniteWeightsError
from consistency_vae.datamodule import InMemoryImages, MNISTDataModule, ResumableLoader
from consistency_vae.model import ConsistencyVAE
from consistency_vae.networks import MLPDecoder, MLPEncoder
from tests.test_reliability import snapshot

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class SimulatedKill(BaseException):
    """What a SIGKILL during a write leaves behind, without killing pytest."""


def tiny_model() -> ConsistencyVAE:
    torch.manual_seed(0)
    return ConsistencyVAE(encoder=partial(MLPEncoder, hidden_dims=[16]),
                          decoder=partial(MLPDecoder, hidden_dims=[16]), latent_dim=2)


def tiny_loader() -> DataLoader:
    images = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return DataLoader(InMemoryImages(images, torch.zeros(64, dtype=torch.long)), batch_size=16,
                      collate_fn=lambda batch: batch)  # __getitems__ returns the whole batch


def train(callback, tmp_path, max_epochs: int, trainer: Trainer | None = None) -> Trainer:
    trainer = trainer or Trainer(callbacks=[callback], logger=False, enable_progress_bar=False,
                                 enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit_loop.max_epochs = max_epochs
    trainer.fit(trainer.lightning_module if trainer.lightning_module else tiny_model(), tiny_loader(),
                tiny_loader())
    return trainer


@pytest.mark.parametrize("checkpoint_class, survives",
                         [(AtomicModelCheckpoint, True), (ModelCheckpoint, False)])
def test_a_kill_during_save_leaves_the_previous_last_ckpt(tmp_path, monkeypatch, checkpoint_class, survives):
    callback = checkpoint_class(dirpath=tmp_path / "ckpt", save_last=True, monitor="val/loss")
    trainer = train(callback, tmp_path, max_epochs=1)
    last = tmp_path / "ckpt/last.ckpt"
    good = last.read_bytes()

    # What Lightning really does: torch.save into a temp file of the system temp folder, then
    # fsspec's commit, shutil.move, to the target. Across file systems (/tmp on tmpfs) that move
    # is a copy: a kill during it leaves the target half written.
    real_move = shutil.move

    def copy_half_then_die(src, dst, *args, **kwargs):
        if "last" not in Path(dst).name:
            return real_move(src, dst, *args, **kwargs)
        data = Path(src).read_bytes()
        Path(dst).write_bytes(data[: len(data) // 2])
        raise SimulatedKill

    monkeypatch.setattr(shutil, "move", copy_half_then_die)
    with pytest.raises(SimulatedKill):
        train(callback, tmp_path, max_epochs=2, trainer=trainer)
    # The plain ModelCheckpoint shows what the test guards against: a torn last.ckpt.
    assert (last.read_bytes() == good) is survives
    if survives:
        assert torch.load(last, weights_only=False)["epoch"] == 0  # hparams hold a functools.partial


def test_no_checkpoint_of_non_finite_weights(tmp_path):
    callback = AtomicModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, monitor="val/loss")
    trainer = train(callback, tmp_path, max_epochs=1)
    before = snapshot(tmp_path / "ckpt")
    with torch.no_grad():
        trainer.lightning_module.decoder.net[0].bias[0] = math.inf
    with pytest.raises(NonFiniteWeightsError, match=r"non-finite weights at epoch 1, global step 4 in "
                       r"decoder.net.0.bias: not writing .* last good checkpoint is kept \(.*last.ckpt\)"):
        callback._save_checkpoint(trainer, str(tmp_path / "ckpt/last.ckpt"))
    assert snapshot(tmp_path / "ckpt") == before




def test_last_ckpt_is_the_last_epoch_even_when_an_earlier_one_is_best(tmp_path, data_dir):
    """Lightning 2.6 alone rewrites last.ckpt only with a new best: here the best stays at epoch 0."""
    # mode="max" on a falling loss: the first epoch stays the best
    ckpt = AtomicModelCheckpoint(dirpath=tmp_path, monitor="val/loss", mode="max", save_last=True)
    model = ConsistencyVAE()
    trainer = Trainer(max_epochs=3, limit_train_batches=5, limit_val_batches=1, logger=False,
                      callbacks=[ckpt], enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), subset=1000))
    assert torch.load(ckpt.best_model_path, weights_only=False)["epoch"] == 0
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["epoch"] == 2


def test_training_loader_resumes_mid_epoch_where_it_stopped():
    data = InMemoryImages(torch.arange(40.0).view(40, 1, 1, 1), torch.arange(40))
    loader = ResumableLoader(data, batch_size=4, drop_last=True, collate_fn=lambda b: b,
                             sampler=DistributedSampler(data, num_replicas=1, rank=0, seed=3))
    loader.sampler.set_epoch(2)
    whole = [y.tolist() for _, y in loader]
    stopped = iter(loader)
    seen = [next(stopped)[1].tolist() for _ in range(3)]
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches": 3} and seen == whole[:3]

    fresh = ResumableLoader(data, batch_size=4, drop_last=True, collate_fn=lambda b: b,
                            sampler=DistributedSampler(data, num_replicas=1, rank=0, seed=3))
    fresh.load_state_dict(state)
    fresh.sampler.set_epoch(2)
    assert [y.tolist() for _, y in fresh] == whole[3:]  # the rest of epoch 2, nothing twice
    assert len([y for _, y in fresh]) == 10  # the next pass is a whole epoch again
