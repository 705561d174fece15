"""Slow: real training on real MNIST does what the paper says."""

import pytest
from lightning import Trainer, seed_everything

from consistency_vae.datamodule import MNISTDataModule
from consistency_vae.model import ConsistencyVAE


def train_and_test(data_dir, alpha: float, epochs: int = 3) -> dict[str, float]:
    seed_everything(0)
    trainer = Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    dm = MNISTDataModule(data_dir=str(data_dir))
    model = ConsistencyVAE(alpha=alpha)
    trainer.fit(model, datamodule=dm)
    return trainer.test(model, datamodule=dm, verbose=False)[0]


@pytest.mark.slow
def test_consistency_loss_lowers_test_kl_on_mnist(data_dir):
    vae = train_and_test(data_dir, alpha=0.0)
    ours = train_and_test(data_dir, alpha=1.0)
    # The paper's claim, on a 3-epoch budget: a clearly lower re-encoding drift on the test set.
    assert ours["test/kl_consistency"] < 0.7 * vae["test/kl_consistency"], (vae, ours)
    # ...and both use their latent code: each ELBO is above the log-likelihood of the best decoder
    # that ignores z (independent pixels at their training means; KL = 0, so ELBO = log p(x)),
    # which a collapsed posterior would score. (-205.8 nats on MNIST.)
    baseline = pixel_marginals_log_likelihood(data_dir)
    assert vae["test/elbo"] > baseline and ours["test/elbo"] > baseline, (baseline, vae, ours)


def pixel_marginals_log_likelihood(data_dir) -> float:
    """Mean test log-likelihood of p(x) = prod_j Bernoulli(x_j; p_j), p_j the training mean of pixel
    j (its maximum-likelihood value), kept in [1e-6, 1 - 1e-6] for pixels never lit in training."""
    dm = MNISTDataModule(data_dir=str(data_dir))
    dm.setup()
    p = dm.train_set.images.flatten(1).double().mean(0).clamp(1e-6, 1 - 1e-6)  # (784,)
    x = dm.test_set.images.flatten(1).double()  # (10000, 784)
    return (x * p.log() + (1 - x) * (1 - p).log()).sum(1).mean().item()
