"""Pure loss functions of the consistency VAE.

Every function returns one value per example, shape ``(B,)``: sums run over pixels or latent
dimensions, and the caller takes the mean over the batch. Nothing here depends on the dataset
size, so ``alpha`` means the same thing for any batch size or dataset.

Notation: ``q(z|x) = N(mu, diag(exp(logvar)))`` is the encoder's posterior, ``p(x|z)`` a Bernoulli
decoder with logits, ``p(z) = N(0, I)`` the prior, and ``x'`` the decoder's mean at a sample of
``q(z|x)``. The method (Towards Consistent Variational Auto-Encoding, AAAI 2020) minimises

    -ELBO(x) + alpha * KL( q(z'|x') || q(z|x) ).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_kl(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """KL( N(mu_q, var_q) || N(mu_p, var_p) ) for diagonal Gaussians, summed over the last dim.

    KL = 1/2 * sum_d [ logvar_p - logvar_q + (var_q + (mu_q - mu_p)^2) / var_p - 1 ]
    """
    return 0.5 * (
        logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) / logvar_p.exp() - 1.0
    ).sum(-1)


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """Analytic KL( N(mu, var) || N(0, I) ) = -1/2 * sum_d (1 + logvar - mu^2 - var). Shape (B,)."""
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(-1)


def consistency_kl(mu_prime: Tensor, logvar_prime: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """The paper's consistency term KL( q(z'|x') || q(z|x) ), shape (B,).

    The re-encoding ``q(z'|x')`` is the first argument of the KL, the original posterior
    ``q(z|x)`` the second, as in the paper. It is 0 exactly when the two posteriors agree.
    """
    return gaussian_kl(mu_prime, logvar_prime, mu, logvar)


def bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log p(x|z) for a Bernoulli decoder on [0, 1] intensities, summed over pixels. Shape (B,).

    Grey levels are used as soft targets (the cross-entropy of the standard MNIST VAE), so the
    value is a cross-entropy rather than a normalised likelihood for non-binary pixels.
    """
    nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return nll.flatten(1).sum(-1)


def gaussian_log_prob(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last dim. Broadcasts over leading dims."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


def iwae_bound(log_px_z: Tensor, log_pz: Tensor, log_qz_x: Tensor) -> Tensor:
    """Importance-weighted bound (Burda et al. 2016) from K samples z_k ~ q(z|x), shape (K, B) in.

    log p(x) >= log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x). Returns (B,) in nats; K = 1 is the
    single-sample ELBO, and the bound tightens as K grows.
    """
    log_w = log_px_z + log_pz - log_qz_x  # (K, B)
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def reparameterize(mu: Tensor, logvar: Tensor, noise: Tensor | torch.Generator | None = None) -> Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I): ``noise`` is eps itself (shaped as mu), or the
    generator that draws it (None: the global RNG)."""
    if isinstance(noise, Tensor):
        return mu + (0.5 * logvar).exp() * noise.to(mu)
    eps = torch.randn(mu.shape, generator=noise, device=mu.device, dtype=mu.dtype)
    return mu + (0.5 * logvar).exp() * eps


def reverse_consistency_kl(mu_prime: Tensor, logvar_prime: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """KL( q(z|x) || q(z'|x') ): the paper's consistency KL with its arguments swapped. Shape (B,)."""
    return gaussian_kl(mu, logvar, mu_prime, logvar_prime)


def jeffreys_divergence(mu_prime: Tensor, logvar_prime: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """Symmetric KL: KL(q'||q) + KL(q||q') = 1/2 sum_d [(var' + dmu^2)/var + (var + dmu^2)/var' - 2].

    The log-variances cancel. Shape (B,).
    """
    var_prime, var, dmu2 = logvar_prime.exp(), logvar.exp(), (mu_prime - mu).pow(2)
    return 0.5 * ((var_prime + dmu2) / var + (var + dmu2) / var_prime - 2.0).sum(-1)


def wasserstein2_squared(mu_prime: Tensor, logvar_prime: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """Squared 2-Wasserstein distance between diagonal Gaussians, shape (B,):

    W2^2 = ||mu' - mu||^2 + sum_d (sigma'_d - sigma_d)^2   (the trace term for commuting covariances).
    """
    sigma_gap = (0.5 * logvar_prime).exp() - (0.5 * logvar).exp()
    return ((mu_prime - mu).pow(2) + sigma_gap.pow(2)).sum(-1)
