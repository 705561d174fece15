"""The maths against independent references in torch.distributions."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from consistency_vae import losses


def diag_normal(mu, logvar):
    return Independent(Normal(mu, (0.5 * logvar).exp()), 1)


@pytest.fixture
def posteriors():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(16, 5, generator=g) for _ in range(4)]  # mu_q, logvar_q, mu_p, logvar_p


def test_gaussian_kl_matches_torch_distributions(posteriors):
    mu_q, logvar_q, mu_p, logvar_p = posteriors
    expected = kl_divergence(diag_normal(mu_q, logvar_q), diag_normal(mu_p, logvar_p))
    torch.testing.assert_close(losses.gaussian_kl(mu_q, logvar_q, mu_p, logvar_p), expected)


def test_consistency_kl_direction_is_reencoding_to_original(posteriors):
    mu_prime, logvar_prime, mu, logvar = posteriors
    expected = kl_divergence(diag_normal(mu_prime, logvar_prime), diag_normal(mu, logvar))
    torch.testing.assert_close(losses.consistency_kl(mu_prime, logvar_prime, mu, logvar), expected)
    reverse = kl_divergence(diag_normal(mu, logvar), diag_normal(mu_prime, logvar_prime))
    assert not torch.allclose(expected, reverse)  # KL is asymmetric: the order matters


def test_kl_is_zero_for_identical_and_positive_otherwise(posteriors):
    mu, logvar, mu2, logvar2 = posteriors
    torch.testing.assert_close(losses.consistency_kl(mu, logvar, mu, logvar), torch.zeros(16))
    assert (losses.consistency_kl(mu2, logvar2, mu, logvar) > 0).all()


def test_kl_to_standard_normal_matches_torch_distributions(posteriors):
    mu, logvar = posteriors[:2]
    prior = diag_normal(torch.zeros_like(mu), torch.zeros_like(logvar))
    expected = kl_divergence(diag_normal(mu, logvar), prior)
    torch.testing.assert_close(losses.kl_to_standard_normal(mu, logvar), expected)


@pytest.mark.parametrize("binary", [True, False])
def test_bernoulli_nll_matches_torch_distributions(binary):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 1, 28, 28, generator=g) * 3
    x = torch.rand(8, 1, 28, 28, generator=g)
    x = (x > 0.5).float() if binary else x  # grey levels: the soft-target cross-entropy
    expected = -Independent(Bernoulli(logits=logits, validate_args=False), 3).log_prob(x)
    torch.testing.assert_close(losses.bernoulli_nll(logits, x), expected)


def test_gaussian_log_prob_matches_torch_distributions(posteriors):
    mu, logvar, z = posteriors[0], posteriors[1], posteriors[2]
    torch.testing.assert_close(losses.gaussian_log_prob(z, mu, logvar),
                               diag_normal(mu, logvar).log_prob(z))


def test_iwae_with_one_sample_is_the_elbo_sample():
    log_px_z, log_pz, log_qz = (torch.randn(1, 10) for _ in range(3))
    torch.testing.assert_close(losses.iwae_bound(log_px_z, log_pz, log_qz),
                               (log_px_z + log_pz - log_qz)[0])


def test_iwae_of_equal_weights_is_that_weight():
    log_w = torch.full((50, 3), -2.5)
    torch.testing.assert_close(losses.iwae_bound(log_w, torch.zeros_like(log_w),
                                                 torch.zeros_like(log_w)), torch.full((3,), -2.5))
    assert math.isclose(losses.iwae_bound(torch.log(torch.tensor([[1.0], [3.0]])),
                                          torch.zeros(2, 1), torch.zeros(2, 1)).item(),
                        math.log(2.0), rel_tol=1e-6)


def test_reparameterize_has_the_posterior_moments():
    mu, logvar = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, math.log(4.0)]])
    g = torch.Generator().manual_seed(0)
    z = losses.reparameterize(mu.expand(200_000, 2), logvar.expand(200_000, 2), g)
    torch.testing.assert_close(z.mean(0), mu[0], atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 2.0]), atol=0.02, rtol=0)
