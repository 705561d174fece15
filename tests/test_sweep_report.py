"""The sweep report on hand-made run folders: several alphas and seeds, an evaluate metrics.json,
a manifest that leaves out a crashed run. Means and stds are checked against numpy."""

import csv
import json
from pathlib import Path

import pytest
import yaml

from consistency_vae.sweep.report import report, tradeoff_figure


# --- the report on hand-made runs: several alphas, seeds, an evaluate metrics.json -------------
def make_run(root: Path, alpha: float, seed: int, kl: float, elbo: float,
             evaluated: dict | None = None) -> Path:
    run = root / f"mnist_alpha{alpha}_seed{seed}" / "version_0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"seed_everything": seed, "model": {"alpha": alpha},
                                                     "data": {"dataset": "mnist"}}))
    with (run / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["epoch", "step", "test/kl_consistency", "test/elbo", "val/elbo"])
        writer.writeheader()
        writer.writerow({"epoch": 0, "step": 5, "test/kl_consistency": 99, "test/elbo": -999, "val/elbo": -1})
        writer.writerow({"epoch": 0, "step": 5, "val/elbo": -2})
        writer.writerow({"epoch": 1, "step": 9, "test/kl_consistency": kl, "test/elbo": elbo})
    if evaluated is not None:
        (run / "eval").mkdir()
        (run / "eval" / "metrics.json").write_text(json.dumps(evaluated))
    return run


def test_report_means_and_stds_over_seeds_per_alpha(tmp_path):
    import numpy as np

    runs = tmp_path / "runs"
    table = {0.0: [(3.1, -150.0), (2.9, -151.0), (3.3, -149.0)], 0.3: [(1.2, -152.0), (1.0, -153.5)],
             10.0: [(0.2, -160.0)]}
    for alpha, values in table.items():
        for seed, (kl, elbo) in enumerate(values):
            make_run(runs, alpha, seed, kl, elbo,
                     {"iwae_ll": elbo + 2.0, "probe_accuracy": 0.5 + seed / 10} if alpha == 0.3 else None)
    rows = report(runs, tmp_path / "out")
    with (tmp_path / "out/alpha_sweep.csv").open() as f:
        written = {float(r["alpha"]): r for r in csv.DictReader(f)}
    assert sorted(written) == [0.0, 0.3, 10.0]
    for alpha, values in table.items():
        kl, elbo = np.array(values).T
        assert float(written[alpha]["kl_consistency_mean"]) == pytest.approx(kl.mean())
        assert float(written[alpha]["elbo_mean"]) == pytest.approx(elbo.mean())
        if len(values) > 1:
            assert float(written[alpha]["elbo_std"]) == pytest.approx(elbo.std(ddof=1))
        else:
            assert written[alpha]["elbo_std"] == ""  # one seed: no spread, not a fake 0
    assert float(written[0.3]["iwae_ll_mean"]) == pytest.approx(np.mean([-150.0, -151.5]))
    assert float(written[0.3]["probe_accuracy_std"]) == pytest.approx(np.std([0.5, 0.6], ddof=1))
    assert written[0.0]["iwae_ll_mean"] == ""
    fig = tradeoff_figure(rows)
    assert [ax.get_xscale() for ax in fig.axes] == ["symlog"] * 4  # KL, ELBO, IWAE, probe
    assert all(ax.get_xlim()[0] <= 0.0 for ax in fig.axes)  # alpha = 0 is on the axis


def test_report_counts_only_the_runs_a_manifest_lists_as_finished(tmp_path):
    runs = tmp_path / "runs"
    good = make_run(runs, 1.0, 0, 0.8, -150.0)
    crashed = make_run(runs, 1.0, 1, 5.0, -400.0)  # partial metrics of a run that died
    (runs / "sweep-x").mkdir()
    (runs / "sweep-x/manifest.json").write_text(json.dumps({"runs": [
        {"status": "finished", "run_dir": str(good)}, {"status": "failed", "run_dir": str(crashed)}]}))
    report(runs, tmp_path / "out")
    with (tmp_path / "out/alpha_sweep.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["n_runs"] == "1" and float(row["elbo_mean"]) == -150.0
