"""The amortisation and approximation gaps on a linear-Gaussian model, where both are known.

p(z) = N(0, I), p(x|z) = N(W z + b, s^2 I) with orthogonal columns of W: the exact posterior is
then a *diagonal* Gaussian, so the best diagonal q is exact, the approximation gap is 0, ELBO* is
log p(x) = log N(x; b, W W^T + s^2 I), and the amortisation gap of any q is KL(q || p(z|x)).
"""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from consistency_vae.evaluation.inference_gaps import GapSettings, inference_gaps, optimise_posterior

S = 0.5  # observation noise


def linear_gaussian(n: int = 16, pixels: int = 6, dim: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(pixels, dim, generator=g, dtype=torch.float64))
    w = q * torch.tensor([2.0, 0.7], dtype=torch.float64)  # orthogonal columns, norms 2 and 0.7
    b = torch.randn(pixels, generator=g, dtype=torch.float64)
    z = torch.randn(n, dim, generator=g, dtype=torch.float64)
    x = z @ w.T + b + S * torch.randn(n, pixels, generator=g, dtype=torch.float64)

    def log_likelihood(z, x):  # (S, B, D), (B, P) -> (S, B)
        return Normal(z @ w.T + b, S).log_prob(x).sum(-1)

    post_var = 1 / (1 + (w * w).sum(0) / S**2)  # (D,): W^T W is diagonal
    post_mu = post_var * ((x - b) @ w) / S**2  # (B, D)
    log_px = MultivariateNormal(b, w @ w.T + S**2 * torch.eye(pixels, dtype=torch.float64)).log_prob(x)
    return x, log_likelihood, post_mu, post_var.log().expand_as(post_mu), log_px


def test_optimisation_finds_the_exact_posterior():
    x, log_likelihood, post_mu, post_logvar, _ = linear_gaussian()
    start = torch.zeros_like(post_mu)
    settings = GapSettings(max_steps=3000, lr=0.05, train_samples=16, tolerance=1e-4)
    mu, logvar, steps = optimise_posterior(log_likelihood, x, start, start, settings,
                                           torch.Generator().manual_seed(1))
    # stochastic gradients: the optimum is found to the noise of 16-sample gradients at lr 0.05
    torch.testing.assert_close(mu, post_mu, atol=0.05, rtol=0)
    torch.testing.assert_close(logvar, post_logvar, atol=0.1, rtol=0)
    assert steps < settings.max_steps  # stopped because the ELBO stopped improving


@pytest.mark.parametrize("start", ["prior", "exact"])
def test_gaps_equal_kl_to_the_posterior_and_zero(start):
    x, log_likelihood, post_mu, post_logvar, log_px = linear_gaussian()
    if start == "prior":  # an encoder that ignores x: q = N(0, I)
        mu, logvar = torch.zeros_like(post_mu), torch.zeros_like(post_mu)
    else:  # a perfect encoder: nothing to gain
        mu, logvar = post_mu, post_logvar
    settings = GapSettings(max_steps=3000, lr=0.05, train_samples=16, tolerance=1e-4,
                           eval_samples=2**16, iwae_k=2**14)
    gaps = inference_gaps(log_likelihood, x, mu, logvar, settings, torch.Generator().manual_seed(2))
    kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(post_mu, (0.5 * post_logvar).exp())).sum(-1)
    # 65536 common samples, 16384 for IWAE and a near-exact optimum: 0.03 nats covers both
    torch.testing.assert_close(gaps["amortization_gap"], kl, atol=0.03, rtol=0.02)
    torch.testing.assert_close(gaps["approximation_gap"], torch.zeros_like(kl), atol=0.03, rtol=0)
    torch.testing.assert_close(gaps["log_px"], log_px, atol=0.03, rtol=0)
    assert math.isclose(float(gaps["elbo_optimised"].mean()), float(log_px.mean()), abs_tol=0.03)


class TwoModes(torch.nn.Module):
    """A decoder of a 2-D z whose 20 Bernoulli logits are 2 - 4 (z1^2 - 2.25)^2 + 0.5 z1: for an image of
    all ones, log p(x|z) has two modes, z1 = +1.5 (the better, by about 3.7 nats) and z1 = -1.5."""

    def forward(self, z):  # (N, 2) -> (N, 20)
        z1 = z[:, :1]
        return (2 - 4 * (z1.pow(2) - 2.25).pow(2) + 0.5 * z1).expand(-1, 20)


def test_the_grid_mode_rescues_an_encoder_start_at_the_lesser_mode():
    from consistency_vae.evaluation import quadrature
    from consistency_vae.evaluation.inference_gaps import bernoulli_log_likelihood

    decoder = TwoModes()
    x = torch.ones(1, 1, 1, 20)
    mu, logvar = torch.tensor([[-1.5, 0.0]]), torch.log(torch.tensor([[0.01, 0.5]]))  # the encoder's guess
    log_px, mode = quadrature.scan(decoder, x)
    assert mode[0, 0].item() == pytest.approx(1.5, abs=0.05)
    log_likelihood = bernoulli_log_likelihood(decoder)
    stuck = inference_gaps(log_likelihood, x, mu, logvar, generator=torch.Generator().manual_seed(0))
    rescued = inference_gaps(log_likelihood, x, mu, logvar, generator=torch.Generator().manual_seed(0),
                             mode=mode.float(), exact_log_px=log_px)
    assert stuck["changed_start"] == 0 and rescued["changed_start"] == 1
    # the optimised ELBO of the better mode is higher by about the modes' difference (3.7 nats)
    assert rescued["elbo_optimised"].item() > stuck["elbo_optimised"].item() + 3
    # with the exact log p(x), the approximation gap is >= 0 (the better mode's own spread aside)
    assert rescued["approximation_gap"].item() > -0.05
    assert isinstance(rescued["hit_step_limit"], bool)
