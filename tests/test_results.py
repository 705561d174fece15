"""The committed results/: one whole `make reproduce` of the sweep files as they are (every grid
point of the seeds it ran, each run evaluated at its last epoch), its verdicts what the current
statistics make of its runs, and the README's headline numbers and verdicts are its."""

import json
from pathlib import Path

import pytest

from consistency_vae.reproduction import summary_md, verdicts
from consistency_vae.reproduction.reproduce import SWEEPS
from consistency_vae.reproduction.runs import Run
from consistency_vae.sweep.sweep_file import grid_points, load_sweep
from tests.conftest import ROOT

SUMMARY = ROOT / "results" / "summary.json"


@pytest.fixture(scope="module")
def summary() -> dict:
    return json.loads(SUMMARY.read_text())


def test_results_are_one_whole_reproduction_of_the_sweep_files(summary):
    """Every grid point of the sweep files with one of the runs' seeds: all of the files' seeds, or
    the first N of them (`make reproduce SEEDS=N`). The committed results/ are the 3-seed
    reproduction of 108 runs, from before the files asked 10 seeds of alpha 0 and 1 and 5 of the rest."""
    assert summary["config"]["from_runs"] is None  # trained by `make reproduce` itself
    assert summary["config"]["lr_schedule"] == "cosine"  # as the sweep files train
    seeds = {r["seed"] for r in summary["runs"]}
    assert seeds == set(range(len(seeds))) == set(range(summary["config"]["seeds"]))
    # none short by the rule it was made with (this one: the most any group has; its files asked 3)
    assert summary["seeds_per_group"]["most"] == len(seeds) and not summary["seeds_per_group"]["short"]
    points = [Run(Path(), p["data.dataset"], p["model.latent_dim"], p["seed_everything"],
                  p.get("model.alpha", 1.0), p.get("model.kl_target"), 25)
              for f in SWEEPS for p in grid_points(load_sweep(ROOT / f)) if p["seed_everything"] in seeds]
    assert sorted((r["dataset"], r["setting"], r["kl_target"] or 0.0, r["alpha_init"], r["seed"])
                  for r in summary["runs"]) == sorted(
        (t.dataset, t.setting, t.kl_target or 0.0, t.alpha, t.seed) for t in points)
    targets = {t for t in points if t.kl_target is not None}
    assert {(r["dataset"], r["setting"], r["kl_target"]) for r in summary["constrained_vs_front"]} == {
        (t.dataset, t.setting, t.kl_target) for t in targets}


def test_every_run_is_evaluated_at_its_last_epoch(summary):
    runs = summary["runs"]
    assert not [(r["name"], r["evaluated_epoch"]) for r in runs if r["evaluated_epoch"] != r["epochs"] - 1]


def test_readme_headline_quotes_the_summary(summary):
    readme = (ROOT / "README.md").read_text()
    mnist = summary["results"]["mnist"]["paper"]
    for model in ("vae", "consistency"):
        kl = mnist[model]["kl_consistency"]
        assert f"{kl['mean']:.2f} ± {kl['std']:.2f}" in readme, model
    rows = summary["constrained_vs_front"]
    within = sum(r["within_10pct"] for r in rows)
    assert f"{within} of the {len(rows)} targets" in readme


def test_the_verdicts_are_what_the_current_statistics_make_of_the_runs(summary):
    """A change of the rule regenerates results/ (`reproduce --from-summary results/summary.json`)."""
    runs = summary["runs"]
    for key, fn in (("claims", verdicts.claims), ("constrained_vs_front", verdicts.constrained_vs_front)):
        assert json.dumps(fn(runs), sort_keys=True) == json.dumps(summary[key], sort_keys=True), key
    assert summary_md.render(summary) == (ROOT / "results" / "summary.md").read_text()


README_CLAIMS = {"drift": "the drift exists and the loss removes it",
                 "elbo_to_loglik": "the ELBO approaches the log-likelihood",
                 "inference": "the encoder becomes a better posterior (amortisation gap)",
                 "representation": "better representations"}


def test_readme_verdicts_quote_the_summary(summary):
    readme = (ROOT / "README.md").read_text()
    for name, row in README_CLAIMS.items():
        claim = summary["claims"][name]
        assert f"| {row} | **{claim['verdict']}**" in readme, name
    count = summary["claims"]["representation"]["count"]
    assert (f"{count['better']} better, {count['no difference']} no difference, {count['worse']} worse"
            in readme)
    positions = [r["position"] for r in summary["constrained_vs_front"]]
    front = f"{positions.count('above')} above it ("
    assert front in readme and f"{positions.count('on')} on it, {positions.count('below')} below" in readme
