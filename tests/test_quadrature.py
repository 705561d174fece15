"""log p(x) by quadrature over a 2-D latent (issue 23, section 3), against independent references:
an adaptive integrator (scipy) on small decoders, broad and sharp, and IWAE on a trained model."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate
from torch import nn

from consistency_vae.evaluation.metrics import iwae_log_likelihood
from consistency_vae.evaluation.quadrature import grid_report, log_likelihood
from consistency_vae.model import ConsistencyVAE

FIXTURE = Path(__file__).parent / "fixtures/mnist_alpha1_hidden32_v0.1.ckpt"


def small_decoder(pixels: int, scale: float, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    decoder = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, pixels))
    with torch.no_grad():
        for p in decoder.parameters():
            p.mul_(scale)
    return decoder


def scipy_log_px(decoder: nn.Module, x: np.ndarray, window: tuple[float, float, float, float] | None = None,
                 limit: float = 8.0) -> float:
    """log ∫∫ p(x|z) N(z; 0, I) dz over [-limit, limit]^2 with scipy's adaptive dblquad, in float64
    numpy (an independent re-implementation of the decoder), scaled by the integrand's peak to stay
    in range. ``window``: a box around a sharp peak, integrated on its own beside the four boxes
    around it, so that the adaptive rule sees the peak."""
    w1, b1, w2, b2 = (p.detach().double().numpy() for p in decoder.parameters())

    def log_joint(z1: float, z2: float) -> float:
        logits = np.tanh(w1 @ np.array([z1, z2]) + b1) @ w2.T + b2
        log_prior = -math.log(2 * math.pi) - (z1 * z1 + z2 * z2) / 2
        return float(x @ logits - np.logaddexp(0, logits).sum() + log_prior)

    L = limit
    a, b, c, d = window or (-L, L, -L, L)
    peak = max(log_joint(z1, z2) for z1 in np.linspace(a, b, 81) for z2 in np.linspace(c, d, 81))
    boxes = [(a, b, c, d)] + ([(-L, a, -L, L), (b, L, -L, L), (a, b, -L, c), (a, b, d, L)] if window else [])
    value = sum(integrate.dblquad(lambda z2, z1: math.exp(log_joint(z1, z2) - peak), z1a, z1b, z2a, z2b,
                                  epsabs=1e-14, epsrel=1e-10)[0]  # scipy's own float64 targets
                for z1a, z1b, z2a, z2b in boxes)
    return peak + math.log(value)


def test_a_broad_posterior_matches_an_adaptive_integrator():
    decoder = small_decoder(pixels=3, scale=1.0)
    images = torch.tensor([[1.0, 0.0, 1.0], [0.2, 0.7, 0.5]]).view(2, 1, 1, 3)
    ours = log_likelihood(decoder, images)
    for i, x in enumerate(images.flatten(1).double().numpy()):
        reference = scipy_log_px(decoder, x)
        # float32 decoder and product over 3 pixels: ~1e-6 nats; the sum's own error is far below
        assert ours[i].item() == pytest.approx(reference, abs=1e-5)


def test_a_sharp_posterior_needs_the_fine_grid_and_gets_it():
    # 60 pixels with large weights: a posterior of std ~0.03, near the default spacing 0.025
    decoder = small_decoder(pixels=60, scale=4.0, seed=1)
    with torch.no_grad():
        x = torch.bernoulli(torch.sigmoid(decoder(torch.tensor([[0.7, -0.4]])))).view(1, 1, 1, 60)
    fine = log_likelihood(decoder, x).item()
    z = torch.cartesian_prod(*[torch.linspace(-5, 5, 401)] * 2)
    with torch.no_grad():
        logits = decoder(z)
        log_px_z = (x.flatten(1) @ logits.T).squeeze(0) - nn.functional.softplus(logits).sum(1)
        joint = log_px_z - z.pow(2).sum(1) / 2
    mode = z[joint.argmax()].tolist()
    window = (mode[0] - 0.5, mode[0] + 0.5, mode[1] - 0.5, mode[1] + 0.5)  # > 10 posterior stds
    reference = scipy_log_px(decoder, x.flatten(1)[0].double().numpy(), window)
    assert fine == pytest.approx(reference, abs=2e-3)  # float32 products over 60 pixels
    coarse = log_likelihood(decoder, x, points=21).item()  # h = 0.5, far wider than the posterior
    assert abs(coarse - reference) > 0.1  # the test can tell a grid that is too coarse


def test_the_grid_report_counts_posteriors_at_the_edge():
    mu = torch.tensor([[0.0, 0.0], [4.9, 0.0], [0.0, -3.2]])
    logvar = torch.log(torch.tensor([[0.01, 0.01], [0.01, 0.01], [0.25, 0.25]]))
    report = grid_report(mu, logvar)
    assert report["images_near_edge"] == 2  # 4.9 + 0.4 and 3.2 + 2.0 reach past 5
    assert report["min_posterior_std"] == pytest.approx(0.1) and report["spacing"] == pytest.approx(0.025)


def test_on_a_trained_model_quadrature_bounds_iwae_from_above_and_is_close(data_dir):
    from consistency_vae.datamodule import load_split

    model = ConsistencyVAE.load_from_checkpoint(FIXTURE, map_location="cpu").eval()
    images, _ = load_split(data_dir, "mnist", train=False)
    x = images[:20]
    exact = log_likelihood(model.decoder, x)
    with torch.no_grad():
        iwae = iwae_log_likelihood(model, x, k=5000, generator=torch.Generator().manual_seed(0)).double()
    # IWAE is a lower bound in expectation, which K = 5000 brings close to log p(x). On this barely
    # trained model each image's bound is noisy (about 0.1 nats), so the test is on the mean over
    # the 20 images: above 0 within 3 standard errors, and small
    gap = exact - iwae
    assert gap.mean() > -3 * gap.std() / math.sqrt(len(gap))
    assert gap.mean() < 0.1


def test_evaluate_reports_it_for_a_2d_latent_only(tmp_path, data_dir):
    from consistency_vae.evaluation.eval_metrics import METRICS
    from consistency_vae.evaluation.evaluate import evaluate_checkpoint

    results = evaluate_checkpoint(FIXTURE, tmp_path / "eval", data_dir=str(data_dir), subset=512, iwae_k=100,
                                  iwae_images=512, figures=False, progress=False)
    # on the whole (subset) test set, next to the IWAE bound it bounds from above in expectation
    assert results["log_likelihood"] > results["iwae_ll"] - 3 * results["iwae_ll_se"]
    gap = results["log_likelihood"] - results["elbo"]
    assert results["log_likelihood_gap"] == pytest.approx(gap, abs=1e-6)  # float64 means of float32 values
    grid = results["quadrature_settings"]
    assert grid["points"] == 401 and grid["images_near_edge"] == 0
    assert grid["min_posterior_std"] > grid["spacing"]
    assert not METRICS["log_likelihood"].applies({"latent_dim": 20})


def test_evaluate_takes_a_coarser_grid_and_it_agrees_where_the_posteriors_are_wider(tmp_path, data_dir):
    """--quadrature_points 101 (h = 0.1; the test suite's quick reproduction uses it): recorded, used by
    both metrics that integrate, and within float32 noise of the default grid on a model whose
    posteriors lie inside the grid and are wider than h (smallest std about 0.33). Not a rule for any
    model: where the integrand peaks at the grid's edge, as on barely trained ones, the sum errs by O(h)."""
    from consistency_vae.datamodule import load_split
    from consistency_vae.evaluation import evaluate_args, quadrature
    from consistency_vae.evaluation.evaluate import evaluate_checkpoint

    assert evaluate_args.QUADRATURE_POINTS == quadrature.POINTS  # the flags' default: results unchanged
    results = evaluate_checkpoint(FIXTURE, tmp_path / "eval", data_dir=str(data_dir), subset=64, iwae_k=2,
                                  iwae_images=8, figures=False, progress=False, quadrature_points=101,
                                  metrics=["inference_gaps"], gap_images=4)
    grid = results["quadrature_settings"]
    assert grid["points"] == 101 and grid["spacing"] == pytest.approx(0.1)
    assert results["inference_gaps_settings"]["quadrature_points"] == 101
    assert grid["min_posterior_std"] > grid["spacing"] and grid["images_near_edge"] == 0
    model = ConsistencyVAE.load_from_checkpoint(FIXTURE, map_location="cpu").eval()
    x = load_split(data_dir, "mnist", train=False)[0][:64]  # evaluate's subset: the first 64
    coarse, fine = log_likelihood(model.decoder, x, points=101), log_likelihood(model.decoder, x)
    assert results["log_likelihood"] == pytest.approx(coarse.mean().item(), rel=1e-12)  # float64, same call
    # float32 products over 784 pixels, summed over other grid points: ~1e-4 nats (measured 6e-5)
    assert (coarse - fine).abs().max().item() < 1e-3
