"""docs/extending.md's three recipes, each followed in a module that the test writes under
tmp_path, outside the package: a dataset, a consistency divergence, an evaluation metric."""

import json
import sys
import textwrap

import pytest
import torch

from consistency_vae import datasets
from consistency_vae.cli import cli_main
from consistency_vae.evaluation import eval_metrics
from consistency_vae.model import ConsistencyVAE
from tests.cli_runs import BASE, csv_only


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """write(name, source): a module importable as ``name``; the registries are restored after."""
    saved = dict(datasets.DATASETS), dict(datasets.TITLES), dict(eval_metrics.METRICS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    names = []

    def write(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)

    yield write
    for registry, before in zip((datasets.DATASETS, datasets.TITLES, eval_metrics.METRICS), saved,
                                strict=True):
        registry.clear()
        registry.update(before)
    for name in names:
        sys.modules.pop(name, None)


def fit(*args: str):
    cli_main(["fit", "--config", BASE, "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false",
              csv_only(), *args])


def test_recipe_a_dataset(user_module, tmp_path):
    user_module("my_data", '''
        import torch
        from consistency_vae.datasets import DatasetInfo, Loaded, register_dataset

        def squares(path):
            """400 colour 3x12x16 images: a bright square whose corner is the class."""
            g = torch.Generator().manual_seed(0)
            labels = torch.randint(0, 4, (400,), generator=g)
            images = torch.randint(0, 30, (400, 3, 12, 16), generator=g, dtype=torch.uint8)
            for i, c in enumerate(labels.tolist()):
                images[i, c % 3, 6 * (c // 2):6 * (c // 2) + 6, 8 * (c % 2):8 * (c % 2) + 8] = 250
            return Loaded(train=(images[:320], labels[:320]), test=(images[320:], labels[320:]))

        register_dataset(DatasetInfo("squares", load=squares, class_names=("a", "b", "c", "d"),
                                     val_size=40))
    ''')
    fit("--data.dataset=my_data.squares", "--data.batch_size=32")
    (ckpt,) = tmp_path.glob("runs/*/version_0/checkpoints/last.ckpt")
    model = ConsistencyVAE.load_from_checkpoint(ckpt)
    assert torch.load(ckpt, weights_only=True)["datamodule_hyper_parameters"]["dataset"] == "my_data.squares"
    assert tuple(model.hparams.image_shape) == (3, 12, 16)  # linked from the dataset's files
    assert model.decode(torch.zeros(1, 2)).shape == (1, 3, 12, 16)


def test_recipe_a_divergence(user_module, tmp_path, data_dir):
    user_module("my_divergence", '''
        from consistency_vae.divergences import ConsistencyDivergence

        class Bhattacharyya(ConsistencyDivergence):
            """Bhattacharyya distance between diagonal Gaussians, summed over dims: (B,)."""

            def __call__(self, mu_prime, logvar_prime, mu, logvar):
                var = 0.5 * (logvar_prime.exp() + logvar.exp())
                return (0.125 * (mu_prime - mu).pow(2) / var
                        + 0.5 * (var.log() - 0.5 * (logvar_prime + logvar))).sum(-1)
    ''')
    fit(f"--data.data_dir={data_dir}", "--data.subset=256",
        "--model.divergence=my_divergence.Bhattacharyya")
    (ckpt,) = tmp_path.glob("runs/*/version_0/checkpoints/last.ckpt")
    model = ConsistencyVAE.load_from_checkpoint(ckpt)
    assert type(model.divergence).__name__ == "Bhattacharyya"
    out = model(torch.rand(4, 1, 28, 28), torch.Generator().manual_seed(0))
    trained = model.divergence(out["mu_prime"], out["logvar_prime"], out["mu"], out["logvar"])
    torch.testing.assert_close(out["loss"], out["recon"] + out["kl"] + model.alpha * trained)
    assert not torch.equal(out["kl_consistency"], trained)  # KL(z'||z) is still the one measured


def test_recipe_a_metric(user_module, tmp_path, data_dir):
    user_module("my_metric", '''
        import torch
        from torchmetrics import Metric
        from consistency_vae.evaluation.eval_metrics import Key, MetricInfo, register_metric

        class MeanNorm(Metric):
            """Mean |mu(x)| over the test images."""

            def __init__(self):
                super().__init__()
                self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
                self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

            def update(self, batch):
                self.total += batch.out["mu"].norm(dim=1).double().sum()
                self.count += len(batch.x)

            def compute(self):
                return {"mean_norm": float(self.total / self.count)}

        register_metric(MetricInfo("mean_norm", lambda settings: MeanNorm(), {
            "mean_norm": Key("mean |mu(x)| on the test images", "lower", "mean |mu(x)|")}))
    ''')
    fit(f"--data.data_dir={data_dir}", "--data.subset=256")
    (ckpt,) = tmp_path.glob("runs/*/version_0/checkpoints/last.ckpt")
    cli_main(["evaluate", "--ckpt_path", str(ckpt), "--output", "eval", "--iwae_k", "2",
              "--no_figures", "--metrics", "my_metric.mean_norm", "--quadrature_points", "101"])
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    model = ConsistencyVAE.load_from_checkpoint(ckpt)
    from consistency_vae.datamodule import MNISTDataModule

    dm = MNISTDataModule(data_dir=str(data_dir), subset=256)
    dm.setup()
    with torch.no_grad():
        expected = model.encode(dm.test_set.images)[0].norm(dim=1).double().mean()
    assert saved["mean_norm"] == pytest.approx(float(expected), rel=1e-6)
    from consistency_vae.reproduction import common
    from consistency_vae.sweep import report as sweep_report

    assert ("mean_norm", "mean |mu(x)|", "lower") in tuple(sweep_report.METRICS)  # a report column
    assert common.LABELS["mean_norm"] == "mean |mu(x)|"
