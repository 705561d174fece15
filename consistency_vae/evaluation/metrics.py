"""What the paper measures, and more: dataset-level metrics that stay correct under DDP.

Each ``torchmetrics.Metric`` keeps *sums* (float64) and a count, reduced by sum across
processes, so a split of the data over ranks or batches gives the same mean as one pass over it
(evaluation must use ``datamodule.UnpaddedDistributedSampler``: padded duplicates would count
twice). Sums of squares beside them give each mean's standard error over images
(``standard_errors.py``), as ``KEY_se``. Per-example maths lives in plain functions beside them.

Per-example loss terms come from the model's own forward (``ConsistencyVAE.forward``) with the
eps rows of ``noise.eval_noise``: one row per image, so KL(z'||z) and the ELBO of an image are the
same whatever the batch size or number of processes, in training, callbacks and ``evaluate``.
"""

import math

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from consistency_vae import losses
from consistency_vae.evaluation.standard_errors import standard_error
from consistency_vae.networks import MLPDecoder

TERMS = ("recon", "kl", "kl_consistency", "elbo")
ACTIVE_THRESHOLD = 0.01  # Burda et al. (2016): a unit is active if Var_x E_q[z_d] > 0.01
# Decoder outputs held at once in the IWAE loop: 2**22 floats = 16 MB of logits (plus a
# softplus temporary of the same size), whatever K and the batch are.
IWAE_MAX_ELEMENTS = 2**22
MIN_K_SHORTCUT = 64  # fewer samples per image: the dense decoder is as fast as the exact shortcut


class LossTerms(Metric):
    """Dataset means of recon, kl, kl_consistency and elbo (nats per image), and their SEs.

    ``update`` takes per-example values, (B,) each; ``compute`` returns a dict of scalars: each
    term's mean and, as ``TERM_se``, its standard error over the images.
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("sums", torch.zeros(len(TERMS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sums_sq", torch.zeros(len(TERMS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, terms: dict[str, Tensor]) -> None:
        values = torch.stack([terms[t].detach().double() for t in TERMS])  # (4, B)
        self.sums += values.sum(-1)
        self.sums_sq += values.pow(2).sum(-1)
        self.count += values.shape[-1]

    def compute(self) -> dict[str, Tensor]:
        means = self.sums / self.count
        errors = standard_error(self.sums, self.sums_sq, self.count)  # (4,)
        return {**{t: means[i] for i, t in enumerate(TERMS)},
                **{f"{t}_se": errors[i] for i, t in enumerate(TERMS)}}


def _softplus_sum(logits: Tensor) -> Tensor:
    """sum_p log(1 + e^l_p) over the last dim, as F.softplus(l).sum(-1). (...,  P) -> (...).

    Computed as log(1 + exp(l)) in place: 4 passes over the logits instead of softplus's
    log1p, which torch's CPU kernels do not vectorise (5x slower here). The rounding of 1 + e^l
    costs < 1e-7 nats per pixel; rows where exp overflows (l > 88) take the stable form
    relu(l) + log(1 + e^-|l|).
    """
    total = logits.exp().add_(1).log_().sum(-1)
    overflow = ~torch.isfinite(total)
    if overflow.any():
        rows = logits[overflow]
        total[overflow] = (rows.clamp(min=0) + rows.abs().neg().exp().add(1).log()).sum(-1)
    return total


def _bernoulli_log_likelihood(logits: Tensor, x: Tensor) -> Tensor:
    """log p(x|z) summed over pixels; logits (..., P), x broadcastable to them -> (...).

    Equals -losses.bernoulli_nll: -BCE(l, x) = x * l - softplus(l).
    """
    return (logits * x).sum(-1) - _softplus_sum(logits)


def _one_hidden_layer(decoder: nn.Module) -> tuple[nn.Linear, nn.Linear] | None:
    """(first, last) Linear layers of the default MLPDecoder with one hidden ReLU layer, else None."""

    if type(decoder) is not MLPDecoder or len(decoder.net) != 3 or type(decoder.net[1]) is not nn.ReLU:
        return None
    return decoder.net[0], decoder.net[2]


def _log_px_one_hidden(first: nn.Linear, last: nn.Linear, z: Tensor, x: Tensor) -> Tensor:
    """Exact log p(x|z) for logits = W2 relu(W1 z + b1) + b2, z (K, B, D), x (B, P) -> (K, B).

    For one image, a hidden unit that is on for all K samples is linear in z, and a unit that is
    off for all of them is 0; only the units whose sign changes among the K samples ("boundary"
    units, ~13% of 400 for the trained 2-D MLP) need work per sample:

        logits_k = (W2[:, on] W1[on]) z_k + (W2[:, on] b1[on] + b2) + W2[:, bnd] relu(pre_k[bnd])

    The same logits as the dense decoder (up to float rounding) for several times fewer
    multiply-adds: the dense 400 x 784 product per sample is what makes IWAE slow on a CPU.
    Each image's boundary units are padded to the batch's largest count, so all images go
    through one batched product.
    """
    w1, b1, w2, b2 = first.weight, first.bias, last.weight, last.bias  # (H, D), (H,), (P, H), (P,)
    (n_k, batch, dim), hidden = z.shape, len(b1)
    z = z.transpose(0, 1).contiguous()  # (B, K, D): one image's samples side by side
    pre = first(z)  # (B, K, H)
    positive = pre > 0
    always_on = positive.all(1)  # (B, H)
    changes = positive.any(1) & ~always_on
    on = always_on.to(z.dtype)
    # every image's linear part in two matrix products: slopes (B, D, P) and offsets (B, P)
    slopes = (w2 @ (on.T.unsqueeze(-1) * w1.unsqueeze(1)).reshape(hidden, batch * dim))
    slopes = slopes.T.reshape(batch, dim, -1)
    offsets = torch.addmm(b2, on * b1, w2.T)
    logits = torch.baddbmm(offsets.unsqueeze(1), z, slopes)  # (B, K, P)
    counts = changes.sum(1)  # (B,)
    width = int(counts.max())
    if width:
        # each image's boundary units first, padded to the widest image; padding is zeroed
        units = changes.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :width]  # (B, W)
        valid = torch.arange(width, device=z.device) < counts.unsqueeze(1)  # (B, W)
        acts = pre.gather(2, units.unsqueeze(1).expand(batch, n_k, width)).relu_()  # (B, K, W)
        logits.baddbmm_(acts * valid.unsqueeze(1), w2.T[units])  # w2.T[units]: (B, W, P)
    x_dot_logits = torch.bmm(logits, x.unsqueeze(-1)).squeeze(-1)  # (B, K)
    return (x_dot_logits - _softplus_sum(logits)).T


def iwae_log_likelihood(model: nn.Module, x: Tensor, k: int, generator: torch.Generator | None = None,
                        max_elements: int = IWAE_MAX_ELEMENTS) -> Tensor:
    """The importance-weighted bound log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x). (B,) nats.

    Burda et al. (2016), eq. 8; same maths as ``losses.iwae_bound``. All K * B * D noise draws
    are made up front (so the result does not depend on the chunking); the decoder then runs on
    chunks of samples with at most ``max_elements`` logits at a time, and the log-sum-exp is
    accumulated across chunks, so memory stays bounded for any K. The default one-hidden-layer
    MLP decoder takes an exact shortcut (``_log_px_one_hidden``), one image at a time.
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
    # The shortcut pays on a CPU with many samples per image; a GPU runs the dense decoder fast.
    mlp = _one_hidden_layer(model.decoder) if mu.device.type == "cpu" and k >= MIN_K_SHORTCUT else None
    chunk = max(MIN_K_SHORTCUT if mlp else 1, max_elements // (batch * flat_x.shape[1]))
    running = torch.full((batch,), -math.inf, device=mu.device, dtype=mu.dtype)
    for start in range(0, k, chunk):
        z_c = z[start:start + chunk]  # (Kc, B, D)
        if mlp:
            log_px = _log_px_one_hidden(*mlp, z_c, flat_x)
        else:
            logits = model.decoder(z_c.reshape(-1, dim)).reshape(len(z_c), batch, -1)  # (Kc, B, P)
            log_px = _bernoulli_log_likelihood(logits, flat_x)
        log_w = (log_px + losses.gaussian_log_prob(z_c, torch.zeros_like(mu), torch.zeros_like(logvar))
                 - losses.gaussian_log_prob(z_c, mu, logvar))  # (Kc, B)
        running = torch.logaddexp(running, torch.logsumexp(log_w, dim=0))
    return running - math.log(k)


class IWAELogLikelihood(Metric):
    """Dataset mean of the K-sample IWAE bound on log p(x), nats per image, and its SE.

    ``update(model, x, generator)`` computes the bound of each image (``iwae_log_likelihood``);
    ``compute`` returns ``{"iwae_ll": mean, "iwae_ll_se": standard error over the images}``.
    """

    full_state_update = False

    def __init__(self, k: int = 1000, max_elements: int = IWAE_MAX_ELEMENTS, **kwargs):
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"iwae k must be >= 1, got {k}")
        self.k, self.max_elements = k, max_elements
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, model: nn.Module, x: Tensor, generator: torch.Generator | None = None) -> None:
        self._add(iwae_log_likelihood(model, x, self.k, generator, self.max_elements))

    def _add(self, bound: Tensor) -> None:
        """Adds per-image bounds, (B,); for subclasses' ``update`` that use the bounds too."""
        bound = bound.detach().double()
        self.total += bound.sum()
        self.total_sq += bound.pow(2).sum()
        self.count += len(bound)

    def compute(self) -> dict[str, Tensor]:
        return {"iwae_ll": self.total / self.count,
                "iwae_ll_se": standard_error(self.total, self.total_sq, self.count)}


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

    return probe_accuracy(LogisticRegression(max_iter=max_iter), train_features, train_labels,
                          test_features, test_labels)


def probe_accuracy(classifier, train_features: Tensor | np.ndarray, train_labels: Tensor | np.ndarray,
                   test_features: Tensor | np.ndarray, test_labels: Tensor | np.ndarray) -> float:
    """Test accuracy of an sklearn ``classifier`` fit on the training features, both standardised
    with the training set's statistics. Features (N, D), labels (N,); tensors or arrays."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def arr(a):
        return a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)

    probe = make_pipeline(StandardScaler(), classifier)
    probe.fit(arr(train_features), arr(train_labels))
    return float(probe.score(arr(test_features), arr(test_labels)))
