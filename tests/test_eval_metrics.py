"""The evaluation metrics registry (eval_metrics.py): evaluate reports kNN accuracy and the mutual
information with its batch size, and, opt-in, the inference gaps with their settings."""

import json
import math

import torch

from consistency_vae.evaluation import eval_metrics, representation
from consistency_vae.evaluation.evaluate import evaluate_checkpoint
from tests.test_evaluate import QUICK, save_checkpoint


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
    assert result["mutual_information"] == float(plain.compute())


def test_evaluate_reports_knn_mutual_information_and_opt_in_gaps(tmp_path, data_dir):
    ckpt = save_checkpoint(tmp_path / "model.ckpt", data_dir)
    results = evaluate_checkpoint(ckpt, tmp_path / "default", figures=False, mi_batch=64, **QUICK)
    assert 0 <= results["knn_accuracy"] <= 1
    assert results["mutual_information_batch"] == 64
    # He et al.'s estimate is at most log B; an untrained encoder carries ~0 nats (MC noise either side)
    assert -0.2 < results["mutual_information"] <= math.log(64)
    assert "amortization_gap" not in results and results["metrics"][-1] == "mutual_information"

    gaps = evaluate_checkpoint(ckpt, tmp_path / "gaps", figures=False, metrics=["inference_gaps"],
                               gap_images=4, **QUICK)
    saved = json.loads((tmp_path / "gaps" / "metrics.json").read_text())
    assert saved["amortization_gap"] == gaps["amortization_gap"] > -0.5  # >= 0 up to MC noise
    assert math.isfinite(saved["approximation_gap"])
    assert saved["inference_gaps_settings"]["images"] == 4
    assert saved["inference_gaps_settings"]["iwae_k"] == 1000  # GapSettings, recorded
    assert saved["kl_consistency"] == results["kl_consistency"]  # the other metrics are unchanged


def test_reports_read_their_columns_from_the_registry():
    from consistency_vae.reproduction import common
    from consistency_vae.sweep import report as sweep_report

    assert [row[0] for row in sweep_report.METRICS] == [
        "kl_consistency", "elbo", "iwae_ll", "probe_accuracy", "knn_accuracy", "mutual_information"]
    assert {"iwae_gap", "active_units", "knn_accuracy", "train_epoch_s", "alpha"} <= set(common.METRICS)
