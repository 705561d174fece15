"""The consistency divergences (divergences.py, losses.py) against independent references, and
the model's contract: KL(z'||z) is measured whatever is trained, from one forward pass."""

import math
from functools import partial

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from consistency_vae import divergences, losses
from consistency_vae.model import ConsistencyVAE
from consistency_vae.networks import MLPDecoder, MLPEncoder


def diag_normal(mu, logvar):
    return Independent(Normal(mu, (0.5 * logvar).exp()), 1)


@pytest.fixture
def posteriors():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(16, 5, generator=g, dtype=torch.float64) for _ in range(4)]


def test_forward_kl_is_the_papers_term(posteriors):
    mu_p, lv_p, mu, lv = posteriors
    expected = kl_divergence(diag_normal(mu_p, lv_p), diag_normal(mu, lv))
    torch.testing.assert_close(divergences.ForwardKL()(mu_p, lv_p, mu, lv), expected)


def test_reverse_kl_matches_torch_distributions(posteriors):
    mu_p, lv_p, mu, lv = posteriors
    expected = kl_divergence(diag_normal(mu, lv), diag_normal(mu_p, lv_p))
    torch.testing.assert_close(divergences.ReverseKL()(mu_p, lv_p, mu, lv), expected)


def test_jeffreys_is_the_sum_of_both_kls(posteriors):
    mu_p, lv_p, mu, lv = posteriors
    q_prime, q = diag_normal(mu_p, lv_p), diag_normal(mu, lv)
    expected = kl_divergence(q_prime, q) + kl_divergence(q, q_prime)
    got = divergences.JeffreysKL()(mu_p, lv_p, mu, lv)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got, divergences.JeffreysKL()(mu, lv, mu_p, lv_p))  # symmetric


def _sqrtm(m):
    values, vectors = torch.linalg.eigh(m)
    return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T


def test_wasserstein2_matches_the_general_gaussian_formula(posteriors):
    """W2^2 = |m1 - m2|^2 + tr(S1 + S2 - 2 (S2^1/2 S1 S2^1/2)^1/2), with full matrices rotated by a
    random orthogonal Q (W2 is rotation invariant), so no step uses the diagonal shortcut."""
    mu_p, lv_p, mu, lv = posteriors
    q_mat, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(1),
                                           dtype=torch.float64))
    expected = []
    for i in range(len(mu)):
        s1 = q_mat @ torch.diag(lv_p[i].exp()) @ q_mat.T
        s2 = q_mat @ torch.diag(lv[i].exp()) @ q_mat.T
        root2 = _sqrtm(s2)
        cross = _sqrtm(root2 @ s1 @ root2)
        expected.append((mu_p[i] - mu[i]).pow(2).sum() + torch.trace(s1 + s2 - 2 * cross))
    torch.testing.assert_close(divergences.Wasserstein2()(mu_p, lv_p, mu, lv), torch.stack(expected))


def test_wasserstein2_in_one_dimension_is_the_quantile_distance():
    """In 1-D, W2^2 = int_0^1 (F1^-1(u) - F2^-1(u))^2 du; midpoint rule on 200k points."""
    u = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000
    f64 = partial(torch.tensor, dtype=torch.float64)
    a, b = Normal(f64(0.3), 0.5), Normal(f64(-1.0), 2.0)
    numeric = (a.icdf(u) - b.icdf(u)).pow(2).mean()
    got = losses.wasserstein2_squared(torch.tensor([[0.3]]), torch.tensor([[2 * math.log(0.5)]]),
                                      torch.tensor([[-1.0]]), torch.tensor([[2 * math.log(2.0)]]))
    assert abs(float(got) - float(numeric)) < 1e-3 * float(numeric)


@pytest.mark.parametrize("name", ["ForwardKL", "ReverseKL", "JeffreysKL", "Wasserstein2"])
def test_every_divergence_is_zero_for_equal_posteriors(posteriors, name):
    mu, lv = posteriors[:2]
    torch.testing.assert_close(getattr(divergences, name)()(mu, lv, mu, lv),
                               torch.zeros(16, dtype=torch.float64))


def small_model(**kwargs):
    torch.manual_seed(0)
    return ConsistencyVAE(encoder=partial(MLPEncoder, hidden_dims=[16]),
                          decoder=partial(MLPDecoder, hidden_dims=[16]), alpha=2.0, **kwargs)


def test_default_trains_kl_consistency_itself():
    out = small_model()(torch.rand(4, 1, 28, 28), torch.Generator().manual_seed(0))
    assert out["divergence"] is out["kl_consistency"]  # the same tensor: no second computation
    torch.testing.assert_close(out["loss"], out["recon"] + out["kl"] + 2.0 * out["kl_consistency"])


@pytest.mark.parametrize("divergence", [divergences.ReverseKL(), divergences.JeffreysKL(),
                                        divergences.Wasserstein2()])
def test_another_divergence_is_trained_and_kl_consistency_still_measured(divergence):
    model, x = small_model(divergence=divergence), torch.rand(4, 1, 28, 28)
    calls = []
    model.encoder.register_forward_hook(lambda *args: calls.append(1))
    out = model(x, torch.Generator().manual_seed(0))
    assert len(calls) == 2  # one pass: x, then x' (no copy of the forward for the other term)
    expected = divergence(out["mu_prime"], out["logvar_prime"], out["mu"], out["logvar"])
    torch.testing.assert_close(out["divergence"], expected)
    torch.testing.assert_close(out["kl_consistency"], losses.consistency_kl(
        out["mu_prime"], out["logvar_prime"], out["mu"], out["logvar"]))
    torch.testing.assert_close(out["loss"], out["recon"] + out["kl"] + 2.0 * expected)
    assert not torch.allclose(out["divergence"], out["kl_consistency"])


def test_divergence_is_chosen_by_class_path_and_kl_consistency_logged(run_cli, tmp_path, monkeypatch,
                                                                     data_dir):
    from tests.cli_runs import BASE, csv_only, read_test_metrics

    monkeypatch.chdir(tmp_path)
    run_cli("fit", "--config", BASE, "--data.subset=512", "--trainer.max_epochs=1", csv_only(),
            f"--data.data_dir={data_dir}", "--trainer.enable_progress_bar=false",
            "--model.divergence=consistency_vae.divergences.JeffreysKL")
    (ckpt,) = tmp_path.glob("runs/*/version_0/checkpoints/last.ckpt")
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hparams["divergence"]["class_path"] == "consistency_vae.divergences.JeffreysKL"
    model = ConsistencyVAE.load_from_checkpoint(ckpt)
    assert type(model.divergence) is divergences.JeffreysKL
    metrics = read_test_metrics(ckpt.parents[1] / "metrics.csv")
    assert metrics["test/kl_consistency"] > 0 and math.isfinite(metrics["test/elbo"])
