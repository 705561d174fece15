"""The evaluation metrics registry (eval_metrics.py): evaluate reports kNN accuracy and the mutual
information with its batch size, and, opt-in, the inference gaps with their settings."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from consistency_vae.datamodule import load_split
from consistency_vae.evaluation import eval_metrics, inference_gaps, metrics, representation
from consistency_vae.evaluation.evaluate import evaluate_checkpoint
from consistency_vae.evaluation.standard_errors import active_units_bootstrap
from consistency_vae.model import ConsistencyVAE
from tests.test_evaluate import QUICK, save_checkpoint


def numpy_se(values) -> float:
    """The standard error of the mean, computed independently: std (n - 1) / sqrt(n)."""
    values = np.asarray(values, dtype=np.float64)
    return values.std(ddof=1) / math.sqrt(len(values))


def feed(metric, x, bounds, model=None, out=None) -> list[eval_metrics.EvalBatch]:
    """Update ``metric`` with test EvalBatches of the rows of x (and of ``out``, else the model's
    forward) between consecutive ``bounds``; returns the batches."""
    batches = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        part = None if out is None else {k: v[start:stop] for k, v in out.items()}
        batches.append(eval_metrics.EvalBatch(model, x[start:stop], None, start, "test", 0, part))
        metric.update(batches[-1])
    return batches


def test_batched_mutual_information_is_the_metric_on_consecutive_batches_of_b():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(250, 3, generator=g).double(), torch.randn(250, 3, generator=g).double()
    batched = eval_metrics.BatchedMutualInformation({"mi_batch": 50, "test_images": 250, "seed": 0})
    for start, stop in ((0, 70), (70, 160), (160, 250)):  # evaluation batches that are not B long
        batched.update(eval_metrics.EvalBatch(None, mu[start:stop], None, start, "test", 0,
                                              {"mu": mu[start:stop], "logvar": logvar[start:stop]}))
    plain, generator = representation.MutualInformation(), torch.Generator().manual_seed(3)
    for i in range(0, 250, 50):
        plain.update(mu[i:i + 50], logvar[i:i + 50], generator)
    result = batched.compute()
    assert result["mutual_information_batch"] == 50
    assert result["mutual_information"] == float(plain.compute()["mutual_information"])
    # its SE: the sample std of the 5 batch estimates / sqrt(5), the estimates drawn again here
    generator = torch.Generator().manual_seed(3)
    estimates = np.array([float(representation.mutual_information_batch(
        mu[i:i + 50], logvar[i:i + 50], generator)) for i in range(0, 250, 50)])
    expected = estimates.std(ddof=1) / math.sqrt(5)
    assert result["mutual_information_se"] == pytest.approx(expected, rel=1e-9)  # float64



@torch.no_grad()
def test_iwae_standard_errors_are_over_the_images_and_the_gap_is_paired(data_dir):
    torch.manual_seed(0)
    model, x = ConsistencyVAE(latent_dim=3).eval(), load_split(data_dir, "mnist", train=False)[0][:30]
    iwae = eval_metrics.IWAE({"iwae_k": 5, "iwae_images": 25, "iwae_batch": 7, "seed": 0})
    batches = feed(iwae, x, [0, 13, 30], model)
    result = iwae.compute()
    # the same bounds again: the metric's generator, over its chunks (7 + 6 images, then 7 + 5)
    generator = torch.Generator().manual_seed(2)
    bounds = torch.cat([metrics.iwae_log_likelihood(model, x[i:j], 5, generator)
                        for i, j in ((0, 7), (7, 13), (13, 20), (20, 25))]).double().numpy()
    elbo = torch.cat([b.out["elbo"] for b in batches])[:25].double().numpy()  # the ELBOs it paired
    assert result["iwae_ll"] == pytest.approx(bounds.mean(), rel=1e-12)  # float64
    assert result["iwae_ll_se"] == pytest.approx(numpy_se(bounds), rel=1e-9)  # float64
    assert result["iwae_gap"] == pytest.approx((bounds - elbo).mean(), rel=1e-9)  # float64
    assert result["iwae_gap_se"] == pytest.approx(numpy_se(bounds - elbo), rel=1e-9)  # paired; float64


def test_inference_gap_standard_errors_are_numpys_over_the_gap_images(monkeypatch):
    def fake_gaps(log_likelihood, x, mu, logvar, settings, generator, mode, exact_log_px):  # gaps from x
        return {"amortization_gap": x[:, 0], "approximation_gap": x[:, 0] ** 2 - 3, "steps": 7,
                "hit_step_limit": False, "changed_start": 0}

    monkeypatch.setattr(inference_gaps, "inference_gaps", fake_gaps)
    values = torch.randn(30, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    metric = inference_gaps.InferenceGaps({"gap_images": 25, "seed": 0})
    feed(metric, values, [0, 4, 19, 30], SimpleNamespace(decoder=None),  # 3-D: no quadrature
         {"mu": torch.zeros(30, 3), "logvar": torch.zeros(30, 3)})
    result, used = metric.compute(), values[:25, 0].numpy()  # the first gap_images images only
    assert result["inference_gaps_settings"]["images"] == 25
    assert result["inference_gaps_settings"]["steps"] == [7, 7, 7]  # one optimisation per batch
    assert result["inference_gaps_settings"]["log_px"] == "iwae"
    assert result["amortization_gap"] == pytest.approx(used.mean(), rel=1e-12)  # float64
    assert result["amortization_gap_se"] == pytest.approx(numpy_se(used), rel=1e-9)  # float64
    assert result["approximation_gap_se"] == pytest.approx(numpy_se(used**2 - 3), rel=1e-9)  # float64


def test_accuracy_standard_error_is_binomial_over_the_test_images():
    probe = eval_metrics.MeansProbe("knn_accuracy", lambda *args: 0.75)  # a fixed classifier's score
    for split, n in (("train", 300), ("test", 40), ("test", 60)):  # 100 test images in two batches
        probe.update(eval_metrics.EvalBatch(None, torch.zeros(n, 1), torch.arange(n) % 2, 0, split, 0,
                                            {"mu": torch.zeros(n, 2), "logvar": torch.zeros(n, 2)}))
    hits = np.r_[np.ones(75), np.zeros(25)]  # 75 of 100 right, the classifier held fixed
    assert probe.compute() == {"knn_accuracy": 0.75,
                               "knn_accuracy_se": pytest.approx(hits.std() / 10, rel=1e-12)}  # float64


def test_active_units_standard_error_is_the_bootstrap_of_every_row():
    mu = torch.randn(300, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 0.1, 0.0])
    metric = eval_metrics.SplitActiveUnits({"latent_dim": 3, "seed": 4})
    feed(metric, torch.zeros(300, 1), [0, 7, 150, 300], out={"mu": mu})
    counts = active_units_bootstrap(mu, 0.01, torch.Generator().manual_seed(4 + 5))  # all rows, in order
    result = metric.compute()
    assert result["active_units"] == 1  # variances 1, 0.01 (not > 0.01 but near it), 0
    assert result["active_units_se"] == pytest.approx(float(counts.double().std()), rel=1e-12)  # float64
    assert result["active_units_se"] > 0  # the second dim is in some resamples and out of others


def test_evaluate_reports_knn_mutual_information_and_opt_in_gaps(tmp_path, data_dir):
    ckpt = save_checkpoint(tmp_path / "model.ckpt", data_dir)
    results = evaluate_checkpoint(ckpt, tmp_path / "default", figures=False, mi_batch=64, **QUICK)
    assert 0 <= results["knn_accuracy"] <= 1
    assert results["mutual_information_batch"] == 64
    # He et al.'s estimate is at most log B; an untrained encoder carries ~0 nats (MC noise either side)
    assert -0.2 < results["mutual_information"] <= math.log(64)
    # the default metrics; log_likelihood (quadrature) because this model's latent is 2-D
    assert "amortization_gap" not in results and results["metrics"][-2:] == ["mutual_information",
                                                                             "log_likelihood"]

    gaps = evaluate_checkpoint(ckpt, tmp_path / "gaps", figures=False, metrics=["inference_gaps"],
                               gap_images=4, **QUICK)
    saved = json.loads((tmp_path / "gaps" / "metrics.json").read_text())
    assert saved["amortization_gap"] == gaps["amortization_gap"] > -0.5  # >= 0 up to MC noise
    assert math.isfinite(saved["approximation_gap"])
    assert saved["inference_gaps_settings"]["images"] == 4
    assert saved["inference_gaps_settings"]["iwae_k"] == 1000  # GapSettings, recorded
    # the shipped defaults, from the encoder's start: how far the optimisation went, and with a 2-D
    # latent log p(x) by quadrature and the grid's mode as a second start
    settings = saved["inference_gaps_settings"]
    assert len(settings["steps"]) == 1 and 0 < settings["steps"][0] <= settings["max_steps"]
    assert settings["batches_at_step_limit"] in (0, 1) and settings["log_px"] == "quadrature"
    assert 0 <= settings["images_started_at_grid_mode"] <= 4
    assert saved["approximation_gap"] > -0.05  # log p(x) - ELBO*, exact log p(x): >= 0 up to ELBO* noise
    assert saved["kl_consistency"] == results["kl_consistency"]  # the other metrics are unchanged

    # every number estimated from the test images comes with its standard error, registered too
    keys = {k: key for name in saved["metrics"] for k, key in eval_metrics.METRICS[name].keys.items()}
    estimates = {k for k in keys if not k.endswith("_se")} - {"mutual_information_batch"}  # B: a setting
    # the 10 numbers of the default metrics, log p(x) and its gap (a 2-D latent) and the 2 inference gaps
    assert len(estimates) == 14
    assert {f"{k}_se" for k in estimates} == {k for k in keys if k.endswith("_se")}
    for key in estimates:
        assert math.isfinite(saved[f"{key}_se"]) and saved[f"{key}_se"] >= 0, key
        assert keys[f"{key}_se"].doc.startswith("standard error over test images of")
        assert keys[f"{key}_se"].label is None and keys[f"{key}_se"].better is None  # no report column


def test_reports_read_their_columns_from_the_registry():
    from consistency_vae.reproduction import common
    from consistency_vae.sweep import report as sweep_report

    assert [row[0] for row in sweep_report.METRICS] == [
        "kl_consistency", "elbo", "iwae_ll", "probe_accuracy", "knn_accuracy", "mutual_information",
        "log_likelihood", "amortization_gap", "approximation_gap"]  # the opt-in gaps too: the reproduction
    # evaluates them
    assert {"iwae_gap", "active_units", "knn_accuracy", "train_epoch_s", "alpha"} <= set(common.METRICS)
