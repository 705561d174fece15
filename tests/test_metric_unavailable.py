"""A metric that the data does not allow is NaN with its reason; the other metrics are kept
(issue 20, item 10). On a dataset of one class the linear probe raised scikit-learn's "only one
class" after every other metric had run, and no metrics.json was written."""

import json
import math

import numpy as np
import pytest
import torch
from torchmetrics import Metric

from consistency_vae.evaluation import eval_metrics
from consistency_vae.evaluation.eval_metrics import Key, MetricInfo, MetricUnavailable
from consistency_vae.evaluation.evaluate import evaluate_checkpoint
from consistency_vae.model import ConsistencyVAE
from tests.test_evaluate import QUICK, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
PROBES = ("probe_accuracy", "knn_accuracy")


@pytest.fixture
def one_class(tmp_path) -> str:
    """A real .npz of 200 random 28 x 28 uint8 images, every label 3."""
    rng = np.random.default_rng(0)
    path = tmp_path / "one_class.npz"
    np.savez(path, images=rng.integers(0, 256, (200, 28, 28), dtype=np.uint8),
             labels=np.full(200, 3, dtype=np.int64))
    return str(path)


def test_one_class_keeps_every_other_metric_and_says_why(tmp_path, mnist_dir, one_class, capsys):
    ckpt = save_checkpoint(tmp_path / "model.ckpt", mnist_dir)
    out = tmp_path / "eval"
    results = evaluate_checkpoint(ckpt, out, dataset="images", path=one_class, figures=False, **QUICK)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved.keys() == results.keys()
    for name in PROBES:  # NaN, with the reason, in metrics.json
        assert math.isnan(saved[name]) and math.isnan(saved[f"{name}_se"])
        assert saved["skipped"][name] == ("the training images are all of class 3: a classifier "
                                          "needs two classes or more")
    assert set(saved["skipped"]) == set(PROBES)
    for key in ("elbo", "kl_consistency", "iwae_ll", "active_units", "mutual_information"):
        assert math.isfinite(saved[key]), key
    printed = [line for line in capsys.readouterr().err.splitlines() if "not computed" in line]
    assert len(printed) == 1 and all(name in printed[0] for name in PROBES)


def test_every_class_present_skips_nothing(tmp_path, mnist_dir):
    ckpt = save_checkpoint(tmp_path / "model.ckpt", mnist_dir)
    results = evaluate_checkpoint(ckpt, tmp_path / "eval", figures=False, **QUICK)
    assert results["skipped"] == {} and all(0 <= results[name] <= 1 for name in PROBES)


class Refuses(Metric):
    """A registered metric whose compute fails with ``error``."""

    def __init__(self, error: Exception):
        super().__init__()
        self.error = error
        self.add_state("seen", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, batch) -> None:
        self.seen += len(batch.x)

    def compute(self) -> dict:
        raise self.error


def register(monkeypatch, error: Exception) -> str:
    """A metric of the registry for this test only (monkeypatch removes it afterwards)."""
    info = MetricInfo("refuses", lambda settings: Refuses(error),
                      {"refused": Key("a number"), "refused_se": eval_metrics.se_key("refused")},
                      default=False)
    monkeypatch.setitem(eval_metrics.METRICS, info.name, info)
    return info.name


def test_any_registered_metric_can_be_unavailable(tmp_path, mnist_dir, monkeypatch):
    name = register(monkeypatch, MetricUnavailable("too few images for this"))
    ckpt = save_checkpoint(tmp_path / "model.ckpt", mnist_dir)
    results = evaluate_checkpoint(ckpt, tmp_path / "eval", figures=False, metrics=[name], **QUICK)
    assert math.isnan(results["refused"]) and math.isnan(results["refused_se"])
    assert results["skipped"] == {name: "too few images for this"}
    assert math.isfinite(results["elbo"])


def test_a_bug_in_a_metric_still_stops_evaluate(tmp_path, mnist_dir, monkeypatch):
    name = register(monkeypatch, ZeroDivisionError("a bug, not the data"))
    ckpt = save_checkpoint(tmp_path / "model.ckpt", mnist_dir)
    with pytest.raises(ZeroDivisionError, match="a bug, not the data"):
        evaluate_checkpoint(ckpt, tmp_path / "eval", figures=False, metrics=[name], **QUICK)
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_knn_needs_as_many_training_images_as_neighbours():
    model, probe = ConsistencyVAE().eval(), eval_metrics.METRICS["knn_accuracy"].build({})
    for split, labels in (("train", [0, 1, 0, 1]), ("test", [0, 1, 1])):
        x = torch.rand(len(labels), 1, 28, 28)
        probe.update(eval_metrics.EvalBatch(model, x, torch.tensor(labels), 0, split, seed=0))
    with pytest.raises(MetricUnavailable, match="4 training images, fewer than the 5 it needs"):
        probe.compute()
