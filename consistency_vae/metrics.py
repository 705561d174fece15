"""What the paper measures, and more: dataset-level metrics that stay correct under DDP.

Each ``torchmetrics.Metric`` keeps *sums* (float64) and a count, reduced by sum across
processes, so a split of the data over ranks or batches gives the same mean as one pass over it
(evaluation must use ``datamodule.UnpaddedDistributedSampler``: padded duplicates would count
twice). Per-example maths lives in plain functions beside them.

Sampling is tied to the data, not to the batching: ``fixed_noise`` draws one eps row per test
image from a seed, so KL(z'||z) and the ELBO of an image are the same whatever the batch size
or number of processes.
"""

import math

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from consistency_vae import losses

TERMS = ("recon", "kl", "kl_consistency", "elbo")
ACTIVE_THRESHOLD = 0.01  # Burda et al. (2016): a unit is active if Var_x E_q[z_d] > 0.01
# Decoder outputs held at once in the IWAE loop: 2**24 floats = 64 MB of logits (plus a
# softplus temporary of the same size), whatever K and the batch are.
IWAE_MAX_ELEMENTS = 2**24


def fixed_noise(n: int, latent_dim: int, seed: int = 0) -> Tensor:
    """(n, latent_dim) standard normal draws, one row per image, the same on every machine."""
    return torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed))


def vae_terms(model: nn.Module, x: Tensor, eps: Tensor) -> dict[str, Tensor]:
    """Per-example terms of ``ConsistencyVAE.forward`` with the noise given: (B,) each.

    The same maths as the model (x' is the decoder mean at z = mu + sigma * eps), but with eps
    passed in, so that an image's values do not depend on where it sits in a batch.
    Also returns mu, logvar, mu_prime, logvar_prime (B, D) and x_prime (B, 1, 28, 28).
    """
    mu, logvar = model.encode(x)  # (B, D)
    z = mu + (0.5 * logvar).exp() * eps.to(mu)
    logits = model.decoder(z)
    x_prime = torch.sigmoid(logits)
    mu_prime, logvar_prime = model.encode(x_prime)
    recon = losses.bernoulli_nll(logits, x)
    kl = losses.kl_to_standard_normal(mu, logvar)
    return {"recon": recon, "kl": kl,
            "kl_consistency": losses.consistency_kl(mu_prime, logvar_prime, mu, logvar),
            "elbo": -(recon + kl), "mu": mu, "logvar": logvar, "mu_prime": mu_prime,
            "logvar_prime": logvar_prime, "x_prime": x_prime}


class LossTerms(Metric):
    """Dataset means of recon, kl, kl_consistency and elbo (nats per image).

    ``update`` takes per-example values, (B,) each; ``compute`` returns a dict of scalars.
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("sums", torch.zeros(len(TERMS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, terms: dict[str, Tensor]) -> None:
        values = torch.stack([terms[t].detach().double() for t in TERMS])  # (4, B)
        self.sums += values.sum(-1)
        self.count += values.shape[-1]

    def compute(self) -> dict[str, Tensor]:
        means = self.sums / self.count
        return {t: means[i] for i, t in enumerate(TERMS)}


def _bernoulli_log_likelihood(logits: Tensor, x: Tensor) -> Tensor:
    """log p(x|z) summed over pixels; logits (K, B, P), x (B, P) -> (K, B).

    Equals -losses.bernoulli_nll: -BCE(l, x) = x * l - softplus(l). The x * l sum is one
    batched product, so only the softplus makes a (K, B, P) temporary.
    """
    return torch.einsum("kbp,bp->kb", logits, x) - nn.functional.softplus(logits).sum(-1)


def iwae_log_likelihood(model: nn.Module, x: Tensor, k: int, generator: torch.Generator | None = None,
                        max_elements: int = IWAE_MAX_ELEMENTS) -> Tensor:
    """The importance-weighted bound log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x). (B,) nats.

    Burda et al. (2016), eq. 8; same maths as ``losses.iwae_bound``. All K * B * D noise draws
    are made up front (so the result does not depend on the chunking); the decoder then runs on
    chunks of samples with at most ``max_elements`` logits at a time, and the log-sum-exp is
    accumulated across chunks, so memory stays bounded for any K.
    """
    if k < 1:
        raise ValueError(f"iwae k must be >= 1, got {k}")
    mu, logvar = model.encode(x)  # (B, D)
    batch, dim = mu.shape
    # drawn where the generator lives (a CPU generator also serves a GPU model), then moved
    noise_device = generator.device if generator is not None else mu.device
    eps = torch.randn((k, batch, dim), generator=generator, device=noise_device).to(mu)  # (K, B, D)
    z = mu + (0.5 * logvar).exp() * eps  # (K, B, D)
    flat_x = x.flatten(1)  # (B, P)
    chunk = max(1, max_elements // (batch * flat_x.shape[1]))
    running = torch.full((batch,), -math.inf, device=mu.device, dtype=mu.dtype)
    for start in range(0, k, chunk):
        z_c = z[start:start + chunk]  # (Kc, B, D)
        logits = model.decoder(z_c.reshape(-1, dim)).reshape(len(z_c), batch, -1)  # (Kc, B, P)
        log_w = (_bernoulli_log_likelihood(logits, flat_x)
                 + losses.gaussian_log_prob(z_c, torch.zeros_like(mu), torch.zeros_like(logvar))
                 - losses.gaussian_log_prob(z_c, mu, logvar))  # (Kc, B)
        running = torch.logaddexp(running, torch.logsumexp(log_w, dim=0))
    return running - math.log(k)


class IWAELogLikelihood(Metric):
    """Dataset mean of the K-sample IWAE bound on log p(x), nats per image.

    ``update(model, x, generator)`` computes the bound of each image (``iwae_log_likelihood``).
    """

    full_state_update = False

    def __init__(self, k: int = 1000, max_elements: int = IWAE_MAX_ELEMENTS, **kwargs):
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"iwae k must be >= 1, got {k}")
        self.k, self.max_elements = k, max_elements
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, model: nn.Module, x: Tensor, generator: torch.Generator | None = None) -> None:
        bound = iwae_log_likelihood(model, x, self.k, generator, self.max_elements)
        self.total += bound.double().sum()
        self.count += len(bound)

    def compute(self) -> Tensor:
        return self.total / self.count


class ActiveUnits(Metric):
    """Number of latent dims whose posterior mean varies across the data: Var_x[mu_d(x)] > threshold.

    Keeps sum(mu) and sum(mu^2) per dim in float64; ``variances()`` gives the (D,) variances.
    """

    full_state_update = False

    def __init__(self, latent_dim: int, threshold: float = ACTIVE_THRESHOLD, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold
        self.add_state("sum", torch.zeros(latent_dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_sq", torch.zeros(latent_dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, mu: Tensor) -> None:
        mu = mu.detach().double()  # (B, D)
        self.sum += mu.sum(0)
        self.sum_sq += mu.pow(2).sum(0)
        self.count += len(mu)

    def _variances(self) -> Tensor:
        mean = self.sum / self.count
        return (self.sum_sq / self.count - mean.pow(2)).clamp(min=0.0)

    def variances(self) -> Tensor:
        """(D,) population variance of each posterior-mean dim, over all processes' data."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn):  # no-op outside DDP
            return self._variances()

    def compute(self) -> Tensor:
        return (self._variances() > self.threshold).sum()


def linear_probe_accuracy(train_features: Tensor | np.ndarray, train_labels: Tensor | np.ndarray,
                          test_features: Tensor | np.ndarray, test_labels: Tensor | np.ndarray,
                          max_iter: int = 1000) -> float:
    """Test accuracy of a multinomial logistic regression fit on the training features.

    The representation-quality probe: features are the posterior means mu(x), (N, D),
    standardised with the training set's statistics. A plain function: sklearn fits on the
    whole set at once, which no sum-reduced state can express.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def arr(a):
        return a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    probe.fit(arr(train_features), arr(train_labels))
    return float(probe.score(arr(test_features), arr(test_labels)))
