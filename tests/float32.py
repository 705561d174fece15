"""Tolerances for float32 results computed two ways (other batch sizes, shards or thread counts).

float32 keeps 24 bits: one rounding is off by at most 2**-24 = 6e-8 of the value. Other batch
sizes go through other GEMM kernels, and another thread count splits a reduction differently,
so the same sum of n terms is added in another order: it differs by about sqrt(n) roundings
of the magnitudes summed (n * 6e-8 at worst). Measured here (64 test images, untrained 3-D
model, batches of 64 vs 1): a per-image recon of 551.5 moves by 2e-7 relative, a per-image KL of
0.02 by 3e-5 relative (1.8e-7 absolute); the means over the images, taken in float64, by 5e-9
(recon) and 2e-7 (KLs); on another CPU, 1e-6 for the kl_consistency mean. So 1e-5 relative.

Values near zero need an absolute floor: a KL is a sum over the latent dimensions of O(1) terms
(log-variances, variance ratios, 1) that nearly cancel, so its rounding error scales with those
magnitudes, not with the small result: ``abs = F32_REL * latent_dim``.

Exact equality stays for claims of "the same computation on the same machine" (resume, seed).
"""

import pytest

F32_REL = 1e-5


def approx_f32(expected, latent_dim: int):
    """pytest.approx for means of float32 VAE terms (recon, KLs, elbo, loss) of a latent_dim model."""
    return pytest.approx(expected, rel=F32_REL, abs=F32_REL * latent_dim)
