"""The committed results/in_progress/: the 10-seed reproduction, done in pieces (`reproduce --output
results/in_progress`, kept.py) until every grid point of the sweep files has a run; then it becomes
results/ and this module goes. What is there already must be what the whole will be made of: runs
of the sweep files' own grid points and settings (25 epochs, all the data), each evaluated at its
last epoch with the reproduction's default evaluation flags, and verdicts that the current
statistics make of them."""

import json
from pathlib import Path

import pytest

from consistency_vae.reproduction import kept, reproduce, summary_md, verdicts
from consistency_vae.sweep.sweep_file import grid_points, load_sweep
from tests.conftest import ROOT

FOLDER = ROOT / "results" / "in_progress"


@pytest.fixture(scope="module")
def summary() -> dict:
    return json.loads((FOLDER / "summary.json").read_text())


def test_every_run_is_a_grid_point_of_the_sweep_files_as_they_are(summary):
    points = [json.dumps(p, sort_keys=True)
              for f in reproduce.SWEEPS for p in grid_points(load_sweep(ROOT / f))]
    for run in summary["runs"]:
        key = json.loads(run["key"])
        assert key["extra_args"] == [], run["name"]  # no --epochs, --subset or --data_dir of a quick try
        assert json.dumps(key["params"], sort_keys=True) in points, run["name"]
    assert len({r["key"] for r in summary["runs"]}) == len(summary["runs"])


def test_every_run_is_evaluated_at_its_last_epoch_with_the_default_flags(summary):
    assert not [(r["name"], r["evaluated_epoch"]) for r in summary["runs"] if r["evaluated_epoch"] != 24]
    defaults = reproduce.make_parser().parse_args([])
    assert {name: summary["config"][name] for name in kept.EVALUATION} == kept.evaluation(defaults)
    assert summary["config"]["epochs"] == 25 and summary["config"]["subset"] is None
    assert summary["config"]["lr_schedule"] == "cosine"


def test_each_group_has_the_first_seeds(summary):
    groups: dict[tuple, list[int]] = {}
    for r in summary["runs"]:
        groups.setdefault((r["dataset"], r["setting"], r["alpha_init"], r["kl_target"]), []).append(r["seed"])
    assert all(sorted(seeds) == list(range(len(seeds))) for seeds in groups.values()), groups


def test_the_verdicts_are_what_the_current_statistics_make_of_the_runs(summary):
    runs = summary["runs"]
    for key, fn in (("claims", verdicts.claims), ("constrained_vs_front", verdicts.constrained_vs_front)):
        assert json.dumps(fn(runs), sort_keys=True) == json.dumps(summary[key], sort_keys=True), key
    assert summary_md.render(summary) == (FOLDER / "summary.md").read_text()


def test_the_figures_are_there():
    for name in ("kl_during_training", "kl_after_training", "gaps", "representation"):
        assert Path(FOLDER / f"{name}.png").stat().st_size > 10_000, name


README_CLAIMS = {"drift": "the drift claim", "elbo_to_loglik": "the ELBO-to-log-likelihood claim",
                 "inference": "the amortisation claim", "representation": "the representations claim"}


def test_the_readme_quotes_its_verdicts(summary):
    readme = (ROOT / "README.md").read_text()
    for name, label in README_CLAIMS.items():
        assert f"{label}: **{summary['claims'][name]['verdict']}**" in readme, name
    mnist = summary["results"]["mnist"]["paper"]
    vae, ours = mnist["vae"]["kl_consistency"], mnist["consistency"]["kl_consistency"]
    ratio = mnist["kl_ratio"]
    assert (f"{vae['mean']:.2f} ± {vae['std']:.2f} -> {ours['mean']:.2f} ± {ours['std']:.2f} nats; ratio "
            f"{ratio['mean']:.2f} ± {ratio['std']:.2f}") in readme
