"""Slow: the quick form of `make reproduce` on a subset, and its summary against the runs' own files."""

import csv
import json
import math
import statistics

import matplotlib.image as mpimg
import pytest

from consistency_vae import reproduce


@pytest.fixture(scope="module")
def quick(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("reproduce")
    reproduce.main(["--output", str(root / "results"), "--runs_dir", str(root / "runs"),
                    "--data_dir", str(data_dir), "--datasets", "mnist", "--seeds", "2", "--epochs", "2",
                    "--subset", "1000", "--sweep_alphas", "3", "--d20_seeds", "0", "--iwae_k", "5",
                    "--iwae_images", "50", "--parallel", "2"])
    return root


def evaluated(root, name: str) -> dict:
    return json.loads((root / "runs" / name / "version_0/eval/metrics.json").read_text())


@pytest.mark.slow
def test_quick_reproduce_writes_every_result_file(quick):
    results = quick / "results"
    for name in ("kl_during_training", "kl_after_training", "latent_drift_mnist", "alpha_tradeoff",
                 "constrained"):
        image = mpimg.imread(results / f"{name}.png")
        assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0.01  # a real picture
    assert "# Reproduction" in (results / "summary.md").read_text()


@pytest.mark.slow
def test_summary_numbers_match_the_metrics_files(quick):
    summary = json.loads((quick / "results/summary.json").read_text())
    c = summary["results"]["mnist"]["paper"]
    vae = [evaluated(quick, f"mnist_paper_alpha0_seed{s}") for s in (0, 1)]
    ours = [evaluated(quick, f"mnist_paper_alpha1_seed{s}") for s in (0, 1)]
    for model, runs in (("vae", vae), ("consistency", ours)):
        for m in ("kl_consistency", "elbo", "iwae_ll", "probe_accuracy"):
            values = [r[m] for r in runs]
            assert c[model][m]["mean"] == pytest.approx(statistics.mean(values))
            assert c[model][m]["std"] == pytest.approx(statistics.stdev(values))
    ratios = [v["kl_consistency"] / o["kl_consistency"] for v, o in zip(vae, ours, strict=True)]
    assert c["kl_ratio"]["mean"] == pytest.approx(statistics.mean(ratios))
    diffs = [o["elbo"] - v["elbo"] for v, o in zip(vae, ours, strict=True)]
    assert c["elbo_diff"]["mean"] == pytest.approx(statistics.mean(diffs))
    # the markdown shows the same numbers, rounded
    md = (quick / "results/summary.md").read_text()
    assert f"{c['kl_ratio']['mean']:.2f} ± {c['kl_ratio']['std']:.2f}" in md
    assert f"{c['vae']['kl_consistency']['mean']:.3f} ± {c['vae']['kl_consistency']['std']:.3f}" in md
    # the per-epoch curve (Fig. 3a) has one test KL per training epoch
    run = next(r for r in summary["runs"] if r["name"] == "mnist_paper_alpha0_seed0")
    assert len(run["curve"]) == 2 and all(math.isfinite(v) for v in run["curve"])
    logged = [float(row["test/kl_consistency"]) for row in csv.DictReader(
        (quick / "runs/mnist_paper_alpha0_seed0/version_0/metrics.csv").open())
        if row.get("test/kl_consistency")]
    assert run["curve"] == logged[:2]  # the per-epoch values, not the final test's


@pytest.mark.slow
def test_rerun_keeps_finished_runs(quick, capsys):
    before = (quick / "runs/mnist_paper_alpha0_seed0/version_0/eval/metrics.json").stat().st_mtime
    reproduce.main(["--output", str(quick / "results2"), "--runs_dir", str(quick / "runs"),
                    "--data_dir", "data", "--datasets", "mnist", "--seeds", "2", "--epochs", "2",
                    "--subset", "1000", "--sweep_alphas", "3", "--d20_seeds", "0", "--iwae_k", "5",
                    "--iwae_images", "50"])
    assert "(7 already done)" in capsys.readouterr().out
    assert (quick / "runs/mnist_paper_alpha0_seed0/version_0/eval/metrics.json").stat().st_mtime == before
