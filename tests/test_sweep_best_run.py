"""A sweep ends by naming its best run by the sweep file's metric, and why (sweep/best_run.py), and
`sweep-report` marks the alpha the same rule picks: on hand-made run folders, and end to end on a
real tiny `consistency-vae sweep` of the shipped sweeps/alpha_mnist.yaml."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from consistency_vae.alpha_choice import constrained_elbo
from consistency_vae.sweep.best_run import closing_line
from tests.conftest import ROOT
from tests.sweep_files import TINY

RULE = {"name": "val/constrained_elbo", "goal": "maximize"}


def run_folder(root: Path, name: str, elbo: float, kl: float, kl_target: float = 1.0) -> dict:
    """A finished run's folder (metrics.csv as Lightning writes it: the validation row, then the
    metric's row) and its sweep record."""
    folder = root / name / "version_0"
    folder.mkdir(parents=True)
    callback = {"class_path": "consistency_vae.sweep_objective.ConstrainedELBO",
                "init_args": {"kl_target": kl_target, "penalty": 100.0}}
    (folder / "config.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": [callback]}}))
    with (folder / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["epoch", "val/elbo", "val/kl_consistency", "val/constrained_elbo"])
        writer.writeheader()
        writer.writerow({"epoch": 0, "val/elbo": elbo - 50, "val/kl_consistency": kl + 5})  # epoch 0
        writer.writerow({"epoch": 0, "val/constrained_elbo": constrained_elbo(elbo - 50, kl + 5, kl_target)})
        writer.writerow({"epoch": 1, "val/elbo": elbo, "val/kl_consistency": kl})  # the last: counts
        writer.writerow({"epoch": 1, "val/constrained_elbo": constrained_elbo(elbo, kl, kl_target)})
    return {"id": name, "status": "finished", "run_dir": str(folder), "params": {"model.alpha": name}}


def test_the_best_run_is_the_rule_s_pick_and_the_line_says_why(tmp_path):
    records = [run_folder(tmp_path, "a0", -100.0, 3.0),  # -300
               run_folder(tmp_path, "a1", -101.0, 0.9),  # within: -101, the pick
               run_folder(tmp_path, "a3", -103.0, 0.5),  # within: -103
               {"id": "a10", "status": "failed", "run_dir": str(tmp_path / "x"), "params": {}}]
    line = closing_line("s", records, {"metric": RULE})
    assert line.startswith("sweep s: best run a1 of 3 finished (model.alpha=a1), val/constrained_elbo -101: ")
    assert "KL(z'||z) 0.900 within the 1-nat budget, the best ELBO (-101.00) of the 2 of 3 runs" in line
    # the budget is the one the runs' callback used: at 0.6 nats alpha 3 is the only run within it
    tight = [run_folder(tmp_path / "tight", n, e, k, kl_target=0.6) for n, e, k in
             (("a1", -101.0, 0.9), ("a3", -103.0, 0.5))]
    assert "best run a3 of 2" in closing_line("s", tight, {"metric": RULE})


def test_another_metric_ranks_by_its_last_value_and_goal(tmp_path):
    records = [run_folder(tmp_path, "a0", -100.0, 3.0), run_folder(tmp_path, "a1", -101.0, 0.9)]
    high = closing_line("s", records, {"metric": {"name": "val/elbo", "goal": "maximize"}})
    assert "best run a0 of 2" in high and "the highest val/elbo (maximize)" in high
    low = closing_line("s", records, {"metric": {"name": "val/kl_consistency"}})  # W&B's default goal
    assert "best run a1 of 2" in low and "the lowest val/kl_consistency (minimize)" in low
    assert closing_line("s", records, {}) is None  # no metric: nothing to rank by
    none = closing_line("s", records, {"metric": {"name": "val/loss"}})
    assert none == "sweep s: none of its 2 finished runs logged val/loss, so there is no best run to name"


def metric_of(run_dir: Path, key: str = "val/constrained_elbo") -> float:
    """Independent reading: the last value of ``key`` the run logged."""
    with (run_dir / "metrics.csv").open() as f:
        return float([row for row in csv.DictReader(f) if row.get(key)][-1][key])


@pytest.mark.slow
def test_a_real_sweep_names_its_best_run_and_the_report_marks_the_rule_s_alpha(tmp_path, data_dir):
    """Two alphas, one seed, tiny runs, W&B disabled; then the same command again, which trains
    nothing and names the same run from the first invocation's records; then sweep-report."""
    runs = tmp_path / "runs"
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "consistency_vae", "sweep", "sweeps/alpha_mnist.yaml", "--only",
               "seed_everything=0", "--only", "model.alpha=0.0,3.0", "--parallel", "2", "--runs_dir",
               str(runs), "--extra-args", f"--data.data_dir={data_dir}", *TINY]
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    manifest = json.loads((runs / "sweep-alpha_mnist/manifest.json").read_text())
    finished = [r for r in manifest["runs"] if r["status"] == "finished"]
    assert len(finished) == 2
    top = max(finished, key=lambda r: metric_of(Path(r["run_dir"])))  # W&B's ranking, read anew
    last = first.stdout.strip().splitlines()[-1]
    assert last.startswith(f"sweep alpha_mnist: best run {top['id']} of 2 finished ("), last
    assert f"val/constrained_elbo {metric_of(Path(top['run_dir'])):.4g}: " in last
    assert "1-nat budget" in last and last.endswith(f"run folder {top['run_dir']}")
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "0 of 0 runs finished" in again.stdout, again.stdout + again.stderr
    assert again.stdout.strip().splitlines()[-1] == last

    out = tmp_path / "report"
    report = subprocess.run([sys.executable, "-m", "consistency_vae", "sweep-report", str(runs),
                             "--output", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert report.returncode == 0, report.stdout + report.stderr
    with (out / "alpha_sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["alpha"]) for r in rows] == [0.0, 3.0]

    def rule(r: dict) -> float:  # the rule by hand, on the test means
        return float(r["elbo_mean"]) - 100.0 * max(0.0, float(r["kl_consistency_mean"]) - 1.0)

    pick = max(rows, key=rule)
    assert [r["best"] for r in rows] == ["yes" if r is pick else "no" for r in rows]
    assert all(float(r["constrained_elbo"]) == pytest.approx(rule(r), rel=1e-9) for r in rows)  # float64
    (marked,) = [line for line in report.stdout.splitlines() if "<- best" in line]
    assert marked.split()[:2] == ["mnist", f"{float(pick['alpha']):g}"]
