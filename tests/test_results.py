"""The committed results/: one whole `make reproduce` of the sweep files as they are (every grid
point of the seeds it ran, each run evaluated at its last epoch), its verdicts what the current
statistics make of its runs, and the README's headline numbers and verdicts are its."""

import json
from pathlib import Path

import pytest

from consistency_vae.reproduction import kept, reproduce, summary_md, verdicts
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
    the first N of them (`make reproduce SEEDS=N`), trained with the files' own settings (no
    --epochs, --subset or --data_dir of a quick try) and evaluated with reproduce's default flags."""
    assert summary["config"]["from_runs"] is None  # trained by `make reproduce` itself
    assert summary["config"]["lr_schedule"] == "cosine"  # as the sweep files train
    assert summary["config"]["epochs"] == 25 and summary["config"]["subset"] is None
    defaults = reproduce.make_parser().parse_args([])
    assert {name: summary["config"][name] for name in kept.EVALUATION} == kept.evaluation(defaults)
    assert not [r["name"] for r in summary["runs"] if json.loads(r["key"])["extra_args"]]
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


def test_seeds_are_10_for_alpha_0_and_1_and_5_for_the_rest(summary):
    """The claims compare alpha = 1 with alpha = 0, paired by seed, on 10 seeds; the rest of the
    fixed-alpha front and the constrained runs have 5 (sweeps/reproduce_*.yaml)."""
    groups: dict[tuple, list[int]] = {}
    for r in summary["runs"]:
        groups.setdefault((r["dataset"], r["setting"], r["alpha_init"], r["kl_target"]), []).append(r["seed"])
    claims = [g for g in groups if g[3] is None and g[2] in (0.0, 1.0)]
    assert len(claims) == 8 and len(groups) == 36 and len(summary["runs"]) == 220
    for group, seeds in groups.items():
        assert sorted(seeds) == list(range(10 if group in claims else 5)), group
    assert not summary["seeds_per_group"]["short"] and not summary["seeds_per_group"].get("missing")


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


def test_the_figures_are_there():
    for name in ("kl_during_training", "kl_after_training", "gaps", "representation", "front",
                 "alpha_tradeoff", "latent_drift_mnist", "latent_drift_fashion_mnist"):
        assert (ROOT / "results" / f"{name}.png").stat().st_size > 10_000, name


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


def section(markdown: str, title: str) -> list[str]:
    """The lines of ``markdown``'s section ``## title``, up to the next section."""
    lines = markdown.splitlines()
    start = lines.index(f"## {title}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start + 1:end]


def test_readme_gives_every_comparison_as_summary_md_does():
    """Every comparison's difference, 95% interval, detectable difference and verdict (the claims'
    lines of summary.md), and every constrained target against the front (its table's rows), are
    in the README word for word."""
    readme, md = (ROOT / "README.md").read_text(), (ROOT / "results" / "summary.md").read_text()
    claims = [line for line in section(md, "Verdict per claim") if line.lstrip().startswith("- ")]
    targets = [line for line in section(md, "Choosing alpha automatically: the constrained mode against the "
                                            "fixed-alpha front") if line.startswith("| ")]
    assert len(claims) == 4 + 4 + 4 + 4 + 16 and len(targets) == 2 + 8
    assert not [line for line in claims + targets if line not in readme.splitlines()]
