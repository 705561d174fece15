"""One number for one thing: trainer.test, the TestSetConsistency callback and evaluate draw the same
eps for each test image (noise.eval_noise) and run the model's one forward, so on the same weights
they report the same test/elbo and test/kl_consistency."""

import csv

import pytest
import torch
from lightning import Trainer
from lightning.pytorch.loggers import CSVLogger

from consistency_vae.callbacks import TestSetConsistency
from consistency_vae.datamodule import MNISTDataModule
from consistency_vae.evaluation.evaluate import evaluate_checkpoint
from consistency_vae.model import ConsistencyVAE
from consistency_vae.noise import BLOCK, eval_noise, eval_noise_at


def csv_rows(path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))

# float32 terms of ~100 nats summed over 512 images in other batch sizes (other GEMM kernels):
# a few 1e-7 relative per image, 1e-5 relative covers the sums with room to spare.
REL = 1e-5


@pytest.mark.parametrize("start, n", [(0, 1), (5, 100), (BLOCK - 3, 7), (BLOCK, BLOCK), (3000, 1500)])
def test_eval_noise_rows_do_not_depend_on_the_slice(start, n):
    whole = eval_noise(0, 5000, 3)
    assert torch.equal(eval_noise(start, n, 3), whole[start:start + n])  # the same draws, bit for bit
    assert torch.equal(eval_noise_at([start, start + n - 1], 3), whole[[start, start + n - 1]])


def test_eval_noise_is_seeded_standard_normal():
    a = eval_noise(0, 4000, 2, seed=0)
    assert torch.equal(a, eval_noise(0, 4000, 2, seed=0))
    assert not torch.equal(a, eval_noise(0, 4000, 2, seed=1))
    assert abs(a.mean()) < 0.05 and abs(a.std() - 1) < 0.05  # 8000 draws: 4 standard errors


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, data_dir):
    """Two epochs on 512 images with the TestSetConsistency callback, and the final checkpoint."""
    root = tmp_path_factory.mktemp("one_number")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = ConsistencyVAE()
        dm = MNISTDataModule(data_dir=str(data_dir), subset=512, eval_batch_size=200)  # 3 batches
        trainer = Trainer(max_epochs=2, accelerator="cpu", logger=CSVLogger(root, name="log"),
                          enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, limit_val_batches=0,
                          callbacks=[TestSetConsistency(batch_size=300)])
        trainer.fit(model, datamodule=dm)
        ckpt = root / "final.ckpt"
        trainer.save_checkpoint(ckpt)
        tested = trainer.test(model, datamodule=dm, verbose=False)[0]
        evaluated = evaluate_checkpoint(ckpt, root / "eval", data_dir=str(data_dir), subset=512, iwae_k=2,
                                        figures=False, progress=False, device="cpu",
                                        quadrature_points=101)  # log p(x): not one of the numbers compared
    finally:
        torch.set_num_threads(threads)
    rows = [r for r in csv_rows(root / "log/version_0/metrics.csv")
            if r.get("test/kl_consistency") and not r.get("test/loss")]  # the callback's rows
    return tested, evaluated, rows


def test_trainer_test_and_evaluate_agree_on_one_checkpoint(fitted):
    tested, evaluated, _ = fitted
    for term in ("elbo", "kl_consistency", "recon", "kl"):
        assert evaluated[term] == pytest.approx(tested[f"test/{term}"], rel=REL), term


def test_the_callbacks_last_value_is_the_tests(fitted):
    tested, _, rows = fitted
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for term in ("elbo", "kl_consistency"):  # the callback ran on the final weights in epoch 1
        assert float(rows[-1][f"test/{term}"]) == pytest.approx(tested[f"test/{term}"], rel=REL), term
