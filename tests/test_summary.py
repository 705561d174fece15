"""The verdicts the README quotes: summary.constrained_rows (does the constrained mode meet epsilon,
and beat the best fixed alpha that does; which alpha to use: test_alpha_choice.py), on hand-made
records whose answers are worked out in the comments; and `reproduce --from-summary`, which
rebuilds results/ from the run records of its summary.json."""

import json
import re

import pytest

from consistency_vae.reproduction.common import TOLERANCE
from consistency_vae.reproduction.summary import constrained_rows
from tests.conftest import ROOT


def record(model, kl_target, alpha_init, seed, kl, elbo, alpha=None, setting="paper", dataset="mnist"):
    return {"dataset": dataset, "setting": setting, "model": model, "kl_target": kl_target,
            "alpha_init": alpha_init, "seed": seed, "kl_consistency": kl, "elbo": elbo,
            "alpha": alpha_init if alpha is None else alpha}


FIXED = [  # (alpha, [(kl, elbo) per seed]) of the fixed-alpha runs, epsilon-free (kl_target None)
    (0.3, [(1.50, -100.0), (1.60, -100.4)]),  # KL 1.55: meets neither epsilon
    (1.0, [(1.00, -102.5), (1.15, -103.5)]),  # KL 1.075 <= 1.1 x 1.0; ELBO -103
    (3.0, [(0.50, -104.0), (0.56, -105.0)]),  # KL 0.53 <= 1.1 x 0.5 (and x 1.0); ELBO -104.5
]


@pytest.fixture
def records():
    fixed = [record("consistency" if a else "vae", None, a, s, kl, elbo)
             for a, seeds in FIXED for s, (kl, elbo) in enumerate(seeds)]
    constrained = [
        record("constrained", 1.0, 1.0, 0, 1.05, -101.0, alpha=2.0),  # KL 1.065: meets 1.0
        record("constrained", 1.0, 1.0, 1, 1.08, -103.0, alpha=2.2),  # ELBO -102
        record("constrained", 0.5, 1.0, 0, 0.60, -104.0, alpha=5.0),  # KL 0.65 > 0.55: misses 0.5
        record("constrained", 0.5, 1.0, 1, 0.70, -104.0, alpha=6.0),
    ]
    other = [record("consistency", None, 1.0, 0, 0.01, -50.0, setting="d20"),  # another setting:
             record("constrained", 1.0, 1.0, 0, 0.9, -60.0, setting="d20")]  # its own row
    return fixed + constrained + other


def test_constrained_rows_compare_each_epsilon_with_the_best_fixed_alpha_meeting_it(records):
    assert TOLERANCE == 1.10  # "within 10% of epsilon or below it": the cases sit on either side
    rows = {(r["setting"], r["kl_target"]): r for r in constrained_rows(records)}
    assert sorted(rows) == [("d20", 1.0), ("paper", 0.5), ("paper", 1.0)]

    one = rows[("paper", 1.0)]  # fixed alphas meeting 1.1 nats: 1 (ELBO -103) and 3 (-104.5)
    assert one["best_fixed_alpha"] == 1.0
    assert one["constrained_kl_consistency"]["mean"] == pytest.approx(1.065)
    assert one["constrained_elbo"]["mean"] == pytest.approx(-102.0)
    assert one["constrained_alpha"]["mean"] == pytest.approx(2.1)
    assert one["fixed_elbo"]["mean"] == pytest.approx(-103.0)
    assert one["meets_target"] is True and one["elbo_at_least_best_fixed"] is True

    half = rows[("paper", 0.5)]  # only alpha 3 meets 0.55 nats; the constrained runs miss it
    assert half["best_fixed_alpha"] == 3.0 and half["fixed_kl_consistency"]["mean"] == pytest.approx(0.53)
    assert half["constrained_kl_consistency"]["mean"] == pytest.approx(0.65)  # > TOLERANCE x 0.5
    assert half["constrained_elbo"]["n"] == 2  # its own two runs, not the epsilon = 1 ones
    assert half["meets_target"] is False and half["elbo_at_least_best_fixed"] is True  # -104 >= -104.5

    d20 = rows[("d20", 1.0)]  # its only fixed run is alpha 1 with KL 0.01; its own ELBO is higher
    assert d20["best_fixed_alpha"] == 1.0 and d20["fixed_elbo"]["mean"] == -50.0
    assert d20["meets_target"] is True and d20["elbo_at_least_best_fixed"] is False


def test_no_fixed_alpha_meeting_epsilon_gives_no_comparison(records):
    strict = [r for r in records if r["setting"] == "paper" and r["model"] != "constrained"]
    strict.append(record("constrained", 0.1, 1.0, 0, 0.09, -110.0, alpha=9.0))
    (row,) = constrained_rows(strict)
    assert row["best_fixed_alpha"] is None and "fixed_elbo" not in row
    assert row["meets_target"] is True and row["elbo_at_least_best_fixed"] is None


def test_from_summary_rebuilds_the_results_from_their_run_records_without_training(tmp_path, monkeypatch):
    """`reproduce --from-summary results/summary.json`: the committed results again, from the run
    records alone (what changed the statistics regenerates them with); nothing is trained or
    evaluated, and the runs' folders (not on this machine) are not needed."""
    from consistency_vae.reproduction import reproduce

    def refuse(*args, **kwargs):
        raise AssertionError("--from-summary must neither train nor evaluate")

    monkeypatch.setattr(reproduce, "train", refuse)
    monkeypatch.setattr(reproduce, "evaluate_all", refuse)
    monkeypatch.chdir(ROOT)  # the path as the committed summary records it
    reproduce.main(["--from-summary", "results/summary.json", "--output", str(tmp_path)])
    rebuilt, committed = (json.loads((folder / "summary.json").read_text())
                          for folder in (tmp_path, ROOT / "results"))
    assert rebuilt["config"].pop("rebuilt_from") == "results/summary.json"
    committed["config"].pop("rebuilt_from", None)  # the committed results may be a rebuild themselves
    assert json.dumps(rebuilt, sort_keys=True) == json.dumps(committed, sort_keys=True)
    note = " Tables and verdicts rebuilt from its run records by `consistency-vae reproduce --from-summary "
    md = (tmp_path / "summary.md").read_text()
    assert note + "results/summary.json`." in md  # the only line a rebuild adds
    assert md.replace(note + "results/summary.json`.", "") == \
        re.sub(re.escape(note) + r"\S+`\.", "", (ROOT / "results/summary.md").read_text())
    assert (tmp_path / "front.png").is_file()


def test_from_summary_judges_the_seeds_by_the_sweep_files_it_names(tmp_path, monkeypatch):
    """An earlier summary without planned_groups (the reproduction of the files at 3 seeds, or one
    made before the rule) gets them from its sweep files where they are all still here: 3 seeds of
    groups the files ask 10 or 5 of are short."""
    import json

    from consistency_vae.reproduction import summary
    from consistency_vae.reproduction.reproduce import SWEEPS

    old = json.loads((ROOT / "results/summary.json").read_text())
    three = {**old, "config": {**old["config"], "sweeps": SWEEPS, "planned_seeds": 10},
             "runs": [r for r in old["runs"] if r["seed"] < 3]}
    (tmp_path / "summary.json").write_text(json.dumps(three))
    monkeypatch.chdir(ROOT)  # the sweep files as a summary names them, from the repository
    got = summary.rebuild(tmp_path / "summary.json", tmp_path / "out")["seeds_per_group"]
    assert got["groups"] == 36 and len(got["short"]) == 36 and set(got["short"].values()) == {3}
    assert got["expected"]["mnist/paper/alpha1"] == 10 and got["expected"]["mnist/d20/eps3"] == 5
    text = (tmp_path / "out/summary.md").read_text()
    assert "36 of 36 run groups have fewer seeds than the sweep files ask" in text
    assert text.count("**Partial reproduction:**") == 1  # one warning, by group, not a second by seeds


def test_from_summary_refuses_a_missing_file_and_from_runs_beside_it(tmp_path):
    """One line naming the value and the fix, no traceback (and nothing trained), for a missing file
    and for files that are not a summary reproduce wrote (empty, other JSON, records of something else)."""
    from consistency_vae.cli import cli_main

    (tmp_path / "empty.json").write_text("")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "other.json").write_text('{"config": {}, "runs": [1, 2]}')
    not_ours = (r"is not a summary.json that reproduce wrote \(\w+Error: .*\): "
                r"give one, e.g. results/summary.json")
    cases = (([str(tmp_path / "nope.json")], r"--from-summary \S*nope.json: no such file; give an"),
             (["x.json", "--from-runs", str(tmp_path)], "--from-summary and --from-runs: give one"),
             *(([str(tmp_path / name)], rf"--from-summary \S*{name} {not_ours}")
               for name in ("empty.json", "list.json", "other.json")))
    for argv, said in cases:
        with pytest.raises(SystemExit) as exit_:
            cli_main(["reproduce", "--from-summary", *argv, "--output", str(tmp_path)])
        assert re.match(rf"consistency-vae[a-z ]*: error: {said}", str(exit_.value.code))
