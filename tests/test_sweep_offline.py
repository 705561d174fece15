"""End to end: `consistency-vae sweep` offline with a run that fails, then `sweep-report` on the
runs it left."""

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from consistency_vae.sweep.report import report
from consistency_vae.sweep.sweep_file import build_command, load_sweep
from tests.conftest import ROOT
from tests.sweep_files import TINY


# --- end to end: the offline sweep, a failed run, the report ------------------------------------
@pytest.fixture(scope="module")
def offline_sweep(tmp_path_factory, data_dir):
    """`consistency-vae sweep sweeps/alpha_mnist.yaml --count 3 --parallel 2`, offline, tiny runs.

    The grid's first three points are alpha = 0 with seeds 0, 1, 2. Seed 1's run folder is taken
    by a file, so that run fails (as on a full or read-only disk) while the others go on.
    """
    runs = tmp_path_factory.mktemp("sweep") / "runs"
    runs.mkdir()
    (runs / "mnist_alpha0.0_seed1").write_text("not a folder")
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}  # the runner's default: offline
    extra = [f"--data.data_dir={data_dir}", *TINY]
    command = [sys.executable, "-m", "consistency_vae", "sweep", "sweeps/alpha_mnist.yaml",
               "--count", "3", "--parallel", "2", "--runs_dir", str(runs), "--extra-args", *extra]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    manifest = json.loads((runs / "sweep-alpha_mnist/manifest.json").read_text())
    return {"proc": proc, "runs": runs, "manifest": manifest, "extra": extra}


@pytest.mark.slow
def test_offline_sweep_runs_to_the_end_and_reports_the_failed_run(offline_sweep):
    proc, manifest, runs = offline_sweep["proc"], offline_sweep["manifest"], offline_sweep["runs"]
    assert proc.returncode == 1, proc.stdout + proc.stderr  # something failed, said after the end
    assert "2 of 3 runs finished, 1 failed" in proc.stdout, proc.stdout + proc.stderr
    by_seed = {r["params"]["seed_everything"]: r for r in manifest["runs"]}
    assert sorted(by_seed) == [0, 1, 2] and {r["params"]["model.alpha"] for r in manifest["runs"]} == {0.0}
    failed = by_seed[1]
    assert failed["status"] == "failed" and failed["exit_code"] != 0
    assert "FAILED with exit code" in proc.stdout and "FileExistsError" in proc.stdout
    assert "2 of 3 runs finished, 1 failed" in proc.stdout
    config = load_sweep(ROOT / "sweeps/alpha_mnist.yaml")
    for seed in (0, 2):
        run = by_seed[seed]
        assert run["status"] == "finished" and run["exit_code"] == 0
        # the command is wandb's, then the runner's own additions
        expected = build_command(config, run["params"]) + [f"--trainer.default_root_dir={runs}",
                                                           *offline_sweep["extra"]]
        assert run["command"] == expected
        assert Path(run["run_dir"]) == runs / f"mnist_alpha0.0_seed{seed}" / "version_0"
        assert (Path(run["run_dir"]) / "metrics.csv").is_file()
        assert Path(run["wandb_run_dir"]).parent == runs / "wandb"
        assert Path(run["wandb_run_dir"]).name.startswith("offline-run-")
        assert run["history"] and config["metric"]["name"] in run["history"][-1]


def final_test_metric(run_dir: Path, key: str) -> float:
    """Independent reading: the last row of metrics.csv holding ``key``."""
    with (run_dir / "metrics.csv").open() as f:
        return float([row for row in csv.DictReader(f) if row.get(key)][-1][key])


@pytest.mark.slow
def test_sweep_report_turns_the_runs_into_the_csv_and_the_figure(offline_sweep, tmp_path):
    rows = report(offline_sweep["runs"], tmp_path)
    with (tmp_path / "alpha_sweep.csv").open() as f:
        (row,) = list(csv.DictReader(f))  # one setting: mnist, alpha 0; the failed run is left out
    assert row["dataset"] == "mnist" and float(row["alpha"]) == 0.0 and row["n_runs"] == "2"
    folders = [offline_sweep["runs"] / f"mnist_alpha0.0_seed{s}/version_0" for s in (0, 2)]
    for metric in ("kl_consistency", "elbo"):  # float64 of the same logged strings: rounding only
        values = [final_test_metric(d, f"test/{metric}") for d in folders]
        mean, std = statistics.mean(values), statistics.stdev(values)
        assert float(row[f"{metric}_mean"]) == pytest.approx(mean, rel=1e-9)  # float64 both sides
        assert float(row[f"{metric}_std"]) == pytest.approx(std, rel=1e-9)  # float64 both sides
    assert rows[0]["n_runs"] == 2
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "alpha_tradeoff.png")
    assert image.shape[0] > 100 and image.shape[1] > 100
