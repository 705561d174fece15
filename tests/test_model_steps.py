"""The training step, in one process: step logs carry their own step's values, and the non-finite
check keeps its guarantee when it runs only every N steps (as on a GPU, to avoid a host sync), with
no tensor read back to Python in between. The GPU's N (log_every_n_steps) is forced here on a CPU
by overriding ``_finite_check_every``; the CPU default is a check at every step."""

import csv
import math

import pytest
import torch
from lightning import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger

from consistency_vae.checkpointing import AtomicModelCheckpoint
from consistency_vae.datamodule import MNISTDataModule
from consistency_vae.model import TERMS, ConsistencyVAE, NonFiniteLossError


def csv_rows(path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class RecordTerms(Callback):
    """The terms each step returned, by the global step they were computed at."""

    def __init__(self):
        self.terms: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.terms[trainer.global_step - 1] = outputs["terms"].clone()  # global_step has moved on


class PoisonBatch(Callback):
    """Turn the batch of global step ``step`` into NaNs: the loss of that step is NaN."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            batch[0].fill_(math.nan)


def trainer_for(tmp_path, steps: int, callbacks, **kwargs) -> Trainer:
    return Trainer(max_steps=steps, accelerator="cpu", enable_progress_bar=False,
                   enable_model_summary=False, callbacks=callbacks, default_root_dir=tmp_path, **kwargs)


@pytest.mark.parametrize("every", [1, 3])
def test_step_rows_of_metrics_csv_hold_that_steps_values(tmp_path, data_dir, every):
    recorder = RecordTerms()
    trainer = trainer_for(tmp_path, 7, [recorder], logger=CSVLogger(tmp_path, name="log"),
                          log_every_n_steps=every, limit_val_batches=0, enable_checkpointing=False)
    torch.manual_seed(0)
    trainer.fit(ConsistencyVAE(), datamodule=MNISTDataModule(data_dir=str(data_dir), subset=1024))
    rows = [r for r in csv_rows(tmp_path / "log/version_0/metrics.csv") if r["train/loss"]]
    # Lightning writes step rows where (step + 1) % every == 0; each must hold its own step's terms
    assert [int(r["step"]) for r in rows] == [s for s in range(7) if (s + 1) % every == 0]
    for row in rows:
        step = int(row["step"])
        logged = [float(row[f"train/{t}"]) for t in TERMS]
        assert logged == recorder.terms[step].tolist(), step  # the same float32 values, written out


class CheckedEvery(ConsistencyVAE):
    """Checks like on a GPU: every ``every`` steps instead of every step (the CPU default)."""

    every = 4

    def _finite_check_every(self) -> int:
        return self.every


def fit_poisoned(tmp_path, data_dir, model, callbacks, **kwargs) -> Trainer:
    """Up to 20 steps on 4096 images with the batch of step 5 turned into NaNs."""
    trainer = trainer_for(tmp_path, 20, [PoisonBatch(5), *callbacks], logger=False, limit_val_batches=0,
                          **kwargs)
    trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), subset=4096))
    return trainer


def test_nonfinite_loss_between_checks_is_caught_at_the_next_check(tmp_path, data_dir):
    # NaN at step 5; checks at steps 3 and 7 ((step + 1) % 4 == 0): the error comes at step 7
    torch.manual_seed(0)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss in the steps up to epoch 0, global "
                                                 r"step 7 \(checked every 4 steps\)"):
        fit_poisoned(tmp_path, data_dir, CheckedEvery(), [], enable_checkpointing=False)


def test_nonfinite_state_between_checks_is_never_saved(tmp_path, data_dir):
    # A checkpoint after every step: the first one after the NaN step is refused, before step 7
    checkpoints = AtomicModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    torch.manual_seed(0)
    with pytest.raises(NonFiniteLossError, match="non-finite weights at epoch 0, global step 6"):
        fit_poisoned(tmp_path, data_dir, CheckedEvery(), [checkpoints])
    saved = torch.load(tmp_path / "ckpt/last.ckpt", weights_only=True)
    assert saved["global_step"] == 5  # steps 0-4: the last state before the NaN step
    weights = {k: v for k, v in saved["state_dict"].items() if k.startswith(("encoder.", "decoder."))}
    assert weights and all(v.isfinite().all() for v in weights.values())


def test_nonfinite_loss_is_caught_at_its_own_step_on_a_cpu(tmp_path, data_dir):
    torch.manual_seed(0)
    model = ConsistencyVAE()
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 0, global step 5: loss=nan"):
        fit_poisoned(tmp_path, data_dir, model, [], enable_checkpointing=False)
    assert all(p.isfinite().all() for p in model.parameters())  # raised before the bad step's update


class CountHostReads(CheckedEvery):
    """Counts, per global step, the tensor-to-Python reads inside training_step: each one is a
    host-device sync on a GPU (bool(t), t.item(), t.tolist(), float(t), int(t))."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads: dict[int, int] = {}

    def training_step(self, batch, batch_idx):
        step, count = self.global_step, [0]
        originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

        def counting(name):
            def read(tensor, *args, **kwargs):
                count[0] += 1
                return originals[name](tensor, *args, **kwargs)
            return read

        try:
            for name in HOST_READS:
                setattr(torch.Tensor, name, counting(name))
            return super().training_step(batch, batch_idx)
        finally:
            for name, original in originals.items():
                setattr(torch.Tensor, name, original)
            self.reads[step] = count[0]


HOST_READS = ("__bool__", "item", "tolist", "__float__", "__int__")


@pytest.mark.parametrize("alpha_mode", ["fixed", "constrained"])
def test_training_step_reads_nothing_back_between_checks(tmp_path, data_dir, alpha_mode):
    # checks every 4 steps (as on a GPU with log_every_n_steps=4): steps 3 and 7 may read, no other
    model = CountHostReads(alpha_mode=alpha_mode)
    trainer = trainer_for(tmp_path, 8, [], logger=False, limit_val_batches=0, enable_checkpointing=False,
                          log_every_n_steps=4)
    trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), subset=2048))
    assert sorted(model.reads) == list(range(8))
    assert {s: n for s, n in model.reads.items() if n} == {3: 1, 7: 1}  # one read: the check's bool
