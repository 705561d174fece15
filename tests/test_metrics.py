"""Every metric against an independent computation, on small data."""

import math
from unittest import mock

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from consistency_vae import losses
from consistency_vae.evaluation import metrics
from consistency_vae.model import ConsistencyVAE
from consistency_vae.noise import eval_noise
from tests.float32 import approx_f32


@pytest.fixture(scope="module")
def model() -> ConsistencyVAE:
    torch.manual_seed(0)
    return ConsistencyVAE(latent_dim=3).eval()


@pytest.fixture(scope="module")
def images(data_dir) -> torch.Tensor:
    from consistency_vae.datamodule import load_split

    return load_split(data_dir, "mnist", train=False)[0][:64]  # (64, 1, 28, 28) real digits


def reference_log_weights(model, x, eps):
    """log p(x|z) + log p(z) - log q(z|x) with torch.distributions, eps (K, B, D) -> (K, B)."""
    mu, logvar = model.encode(x)
    q = Normal(mu, (0.5 * logvar).exp())
    z = mu + q.scale * eps
    px = Bernoulli(logits=model.decoder(z.flatten(0, 1)).flatten(1), validate_args=False)
    log_px = px.log_prob(x.flatten(1).repeat(len(eps), 1)).sum(-1).view(len(eps), -1)
    return log_px + Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z).sum(-1)


@torch.no_grad()
def test_forward_with_given_noise_equals_the_forward_drawing_it(model, images):
    out = model(images, torch.Generator().manual_seed(3))
    eps = torch.randn(len(images), 3, generator=torch.Generator().manual_seed(3))
    terms = model(images, eps)
    for t in metrics.TERMS:
        torch.testing.assert_close(terms[t], out[t])
    # and KL(z'||z) against torch.distributions
    q = Normal(terms["mu"], (0.5 * terms["logvar"]).exp())
    q_prime = Normal(terms["mu_prime"], (0.5 * terms["logvar_prime"]).exp())
    torch.testing.assert_close(terms["kl_consistency"], kl_divergence(q_prime, q).sum(-1))


@pytest.mark.parametrize("splits", [[64], [1, 63], [10, 20, 34]])
@torch.no_grad()
def test_loss_terms_are_dataset_means_whatever_the_batches(model, images, splits):
    eps = eval_noise(0, len(images), 3)
    whole = model(images, eps)
    metric, fed = metrics.LossTerms(), []
    for x, e in zip(images.split(splits), eps.split(splits), strict=True):
        fed.append(model(x, e))
        metric.update(fed[-1])
    result = metric.compute()
    # other batch sizes run other float32 GEMM kernels: equal to float32 precision (tests/float32.py)
    for t in metrics.TERMS:
        assert result[t].item() == approx_f32(whole[t].double().mean().item(), latent_dim=3)
        # the SE over images, from float64 sums of the very values fed in: numpy's, to float64 rounding
        values = torch.cat([out[t] for out in fed]).double().numpy()  # (64,)
        assert result[f"{t}_se"].item() == pytest.approx(values.std(ddof=1) / 8, rel=1e-10)  # float64
        one_pass = whole[t].double().numpy().std(ddof=1) / math.sqrt(64)  # the batches of 64 images
        assert result[f"{t}_se"].item() == approx_f32(one_pass, latent_dim=3)
    assert result["elbo"].item() == approx_f32(-(result["recon"] + result["kl"]).item(), latent_dim=3)


def test_eval_noise_is_seeded_and_per_image():
    a, b = eval_noise(0, 100, 2, seed=0), eval_noise(0, 100, 2, seed=0)
    assert torch.equal(a, b) and not torch.equal(a, eval_noise(0, 100, 2, seed=1))
    assert abs(a.mean()) < 0.3 and 0.7 < a.std() < 1.3


@pytest.mark.parametrize("max_elements", [1, 784 * 8 * 7, 2**24])  # chunks of 1, 7, all K samples
@torch.no_grad()
def test_iwae_equals_the_unchunked_bound_from_torch_distributions(model, images, max_elements):
    x, k = images[:8], 20
    got = metrics.iwae_log_likelihood(model, x, k, torch.Generator().manual_seed(5), max_elements)
    eps = torch.randn((k, 8, 3), generator=torch.Generator().manual_seed(5))  # the same draws
    log_w = reference_log_weights(model, x, eps)
    expected = torch.logsumexp(log_w, 0) - math.log(k)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(got, losses.iwae_bound(log_w, torch.zeros_like(log_w),
                                                      torch.zeros_like(log_w)), rtol=1e-5, atol=1e-3)


class NarrowPosterior(torch.nn.Module):
    """The model with q(z|x) narrowed by exp(shift / 2): most hidden units then keep one sign."""

    def __init__(self, model, shift: float):
        super().__init__()
        self.model, self.shift, self.decoder = model, shift, model.decoder

    def encode(self, x):
        mu, logvar = self.model.encode(x)
        return mu * 3, logvar + self.shift


@pytest.mark.parametrize("shift", [0.0, -6.0, -12.0])
@torch.no_grad()
def test_iwae_shortcut_for_the_mlp_decoder_equals_the_dense_decoder(model, images, shift):
    narrow, x, k = NarrowPosterior(model, shift), images[:6], metrics.MIN_K_SHORTCUT + 36
    with mock.patch.object(metrics, "_log_px_one_hidden", wraps=metrics._log_px_one_hidden) as fast:
        got = metrics.iwae_log_likelihood(narrow, x, k, torch.Generator().manual_seed(2))
    assert fast.called  # the default 784-400-D decoder takes the shortcut
    eps = torch.randn((k, 6, 3), generator=torch.Generator().manual_seed(2))
    expected = torch.logsumexp(reference_log_weights(narrow, x, eps), 0) - math.log(k)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-3)
    if shift == -6.0:  # units always on, always off, and changing sign among the samples all occur
        mu, logvar = narrow.encode(x)
        positive = model.decoder.net[0](mu + (0.5 * logvar).exp() * eps) > 0
        assert positive.all(0).any() and (~positive).all(0).any()
        assert (positive.any(0) & ~positive.all(0)).any()


def test_iwae_of_a_deeper_decoder_uses_the_dense_path(images):
    from consistency_vae.networks import MLPDecoder, MLPEncoder

    torch.manual_seed(0)
    deep = ConsistencyVAE(encoder=lambda d, shape: MLPEncoder(d, shape, (64, 32)),
                          decoder=lambda d, shape: MLPDecoder(d, shape, (64, 32)), latent_dim=3).eval()
    assert metrics._one_hidden_layer(deep.decoder) is None
    x, k = images[:4], 80
    with torch.no_grad():
        got = metrics.iwae_log_likelihood(deep, x, k, torch.Generator().manual_seed(4))
        eps = torch.randn((k, 4, 3), generator=torch.Generator().manual_seed(4))
        expected = torch.logsumexp(reference_log_weights(deep, x, eps), 0) - math.log(k)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3)


@torch.no_grad()
def test_iwae_with_one_sample_is_the_elbo_in_expectation(model, images):
    x = images[:16].repeat(200, 1, 1, 1)  # 200 independent draws of z per image
    g = torch.Generator().manual_seed(0)
    iwae1 = metrics.iwae_log_likelihood(model, x, k=1, generator=g).double()  # (3200,)
    elbo = model(x, torch.randn(len(x), 3, generator=g))["elbo"].double()
    standard_error = math.sqrt(iwae1.var() / len(x) + elbo.var() / len(x))
    assert abs(iwae1.mean() - elbo.mean()) < 4 * standard_error


@torch.no_grad()
def test_iwae_rises_with_k_and_bounds_the_elbo_from_above(model, images):
    g = torch.Generator().manual_seed(1)
    means = [metrics.iwae_log_likelihood(model, images, k, g).mean().item() for k in (1, 10, 1000)]
    elbo = model(images, eval_noise(0, len(images), 3))["elbo"].mean().item()
    assert means[0] < means[1] < means[2], means
    assert means[2] > elbo


@torch.no_grad()
def test_iwae_metric_is_the_mean_over_all_updates(model, images):
    metric = metrics.IWAELogLikelihood(k=5)
    metric.update(model, images[:10], torch.Generator().manual_seed(1))
    metric.update(model, images[10:40], torch.Generator().manual_seed(2))
    expected = torch.cat([
        metrics.iwae_log_likelihood(model, images[:10], 5, torch.Generator().manual_seed(1)),
        metrics.iwae_log_likelihood(model, images[10:40], 5, torch.Generator().manual_seed(2))])
    # the same per-image values, summed in float64 in another grouping
    result = metric.compute()
    assert result["iwae_ll"].item() == pytest.approx(expected.double().mean().item(), rel=1e-12)  # float64
    expected_se = expected.double().numpy().std(ddof=1) / math.sqrt(40)
    assert result["iwae_ll_se"].item() == pytest.approx(expected_se, rel=1e-10)  # float64
    with pytest.raises(ValueError, match="k must be >= 1"):
        metrics.IWAELogLikelihood(k=0)


def test_active_units_on_constructed_latents():
    torch.manual_seed(0)
    # dims with variance 1, 0 (constant), 0.004 and 0.04: two active at the 0.01 threshold
    mu = torch.randn(5000, 4) * torch.tensor([1.0, 0.0, 0.004**0.5, 0.04**0.5]) + 3.0
    metric = metrics.ActiveUnits(latent_dim=4)
    for part in mu.split([1, 999, 4000]):
        metric.update(part)
    assert metric.compute().item() == 2
    np.testing.assert_allclose(metric.variances().numpy(), mu.double().var(0, unbiased=False).numpy(),
                               rtol=1e-6, atol=1e-9)  # float32 variances against float64: rtol 1e-6


def test_linear_probe_separates_clusters_and_is_chance_on_noise():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=10.0, size=(10, 2))
    y_train, y_test = rng.integers(0, 10, 2000), rng.integers(0, 10, 1000)
    x_train = centres[y_train] + rng.normal(size=(2000, 2))
    x_test = centres[y_test] + rng.normal(size=(1000, 2))
    assert metrics.linear_probe_accuracy(x_train, y_train, x_test, y_test) > 0.9
    noise_acc = metrics.linear_probe_accuracy(rng.normal(size=(2000, 2)), y_train,
                                              torch.randn(1000, 2), torch.as_tensor(y_test))
    assert noise_acc < 0.2  # chance is 0.1
