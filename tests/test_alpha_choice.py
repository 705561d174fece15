"""One answer to "which alpha?": the rule of alpha_choice (the best ELBO among models whose
KL(z'||z) is at most a budget, as the exact penalty constrained_elbo) is what the sweep metric logs,
what sweep-report marks and what the reproduction's summary recommends, on hand-made rows whose
answers are worked out in the comments; and results/ and the README quote that recommendation."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from consistency_vae import alpha_choice
from consistency_vae.alpha_choice import best, constrained_elbo
from consistency_vae.reproduction import summary_md
from consistency_vae.reproduction.summary import recommend
from consistency_vae.sweep.report import summarise
from consistency_vae.sweep_objective import ConstrainedELBO
from tests.conftest import ROOT


def row(alpha, elbo, kl, dataset="mnist"):
    return {"dataset": dataset, "alpha": alpha, "elbo_mean": elbo, "kl_consistency_mean": kl}


# --- the rule ------------------------------------------------------------------------------------
@pytest.mark.parametrize("elbo, kl, expected", [(-90.0, 0.5, -90.0), (-90.0, 1.0, -90.0),
                                                (-90.0, 1.25, -115.0), (-80.0, 3.0, -280.0)])
def test_floats_and_tensors_give_the_same_number(elbo, kl, expected):
    assert constrained_elbo(elbo, kl) == expected  # float64, exact: 0.25 and 2.0 are binary fractions
    value = constrained_elbo(torch.tensor(elbo), torch.tensor(kl))  # the callback's float32 tensors
    assert isinstance(value, torch.Tensor) and value.item() == pytest.approx(expected, rel=1e-6)


def test_a_missing_kl_is_never_within_the_budget():
    assert math.isnan(constrained_elbo(-90.0, math.nan))
    assert torch.isnan(constrained_elbo(torch.tensor(-90.0), torch.tensor(math.nan)))


def test_best_is_the_best_elbo_within_the_budget():
    rows = [row(0.0, -100.0, 3.0),   # over by 2: -300
            row(0.3, -100.5, 1.5),   # over by 0.5: -150.5
            row(1.0, -101.0, 1.0),   # exactly the budget: within, -101 (the pick)
            row(3.0, -102.0, 0.5),   # within, but a lower ELBO: -102
            row(10.0, math.nan, 0.1)]  # no ELBO: not a candidate
    choice = best(rows)
    assert choice.row["alpha"] == 1.0 and choice.meets_budget
    assert (choice.within, choice.candidates) == (2, 4)
    assert choice.constrained_elbo == -101.0
    assert "the best ELBO (-101.00) of the 2 of 4 alphas within it" in choice.why()
    assert best(rows, kl_budget=0.5).row["alpha"] == 3.0  # a tighter budget: the next alpha


def test_best_says_when_no_row_meets_the_budget():
    rows = [row(1.0, -100.0, 1.5), row(3.0, -120.0, 1.1)]  # -150 and -130: alpha 3 scores higher
    choice = best(rows)
    assert choice.row["alpha"] == 3.0 and not choice.meets_budget and choice.within == 0
    assert choice.why().startswith("none of the 2 alphas meets the 1-nat budget")


def test_a_row_just_over_the_budget_wins_only_by_more_than_the_penalty():
    within = row(10.0, -110.0, 0.5)
    assert best([within, row(3.0, -100.0, 1.05)]).row["alpha"] == 3.0  # -105 > -110: over, and says so
    assert not best([within, row(3.0, -100.0, 1.05)]).meets_budget
    assert best([within, row(3.0, -100.0, 1.2)]).row["alpha"] == 10.0  # -120 < -110


def test_best_of_nothing_is_none_and_equals_go_to_the_first():
    assert best([]) is None and best([row(1.0, math.nan, math.nan)]) is None
    assert best([row(1.0, -100.0, 0.5), row(3.0, -100.0, 0.2)]).row["alpha"] == 1.0


# --- the same function in the summary, the report and the sweep metric ---------------------------
def record(dataset, setting, alpha, seed, elbo, kl, kl_target=None):
    return {"dataset": dataset, "setting": setting, "alpha_init": alpha, "seed": seed, "elbo": elbo,
            "kl_consistency": kl, "kl_target": kl_target, "model": f"alpha{alpha:g}"}


RECORDS = [  # two seeds per alpha; the means in the comments
    *[record("mnist", "paper", a, s, e + d, k + d / 10) for a, e, k in
      [(0.0, -150.0, 9.0),    # mean KL 9.0, ELBO -150.0: over
       (1.0, -151.0, 1.02),   # mean KL 1.02, over by 0.02: -153.0
       (3.0, -152.0, 0.9),    # within: -152.0, the pick
       (10.0, -155.0, 0.5)]   # within, lower ELBO
      for s, d in ((0, -0.5), (1, 0.5))],
    *[record("mnist", "d20", a, s, e, k) for a, e, k in [(0.0, -100.0, 8.0), (3.0, -110.0, 4.5)]
      for s in (0, 1)],  # 20-D: no alpha meets 1 nat
    record("mnist", "paper", 1.0, 0, -140.0, 0.5, kl_target=0.5),  # constrained: not a fixed alpha
]


def fixed_paper() -> list[dict]:
    """RECORDS' fixed-alpha 2-D runs, as sweep-report reads runs (``alpha``)."""
    return [{**r, "alpha": r["alpha_init"]} for r in RECORDS
            if r["setting"] == "paper" and r["kl_target"] is None]


def test_the_recommendation_is_what_the_rule_picks_per_dataset_and_setting():
    got = recommend(RECORDS)
    assert list(got) == ["mnist/paper", "mnist/d20"]
    paper = got["mnist/paper"]
    assert (paper["alpha"], paper["kl_consistency"], paper["elbo"]) == (3.0, pytest.approx(0.9),
                                                                        pytest.approx(-152.0))
    assert paper["elbo_below_vae"] == pytest.approx(2.0) and (paper["within"], paper["candidates"]) == (2, 4)
    fixed = fixed_paper()
    assert best(summarise(fixed)).row["alpha"] == paper["alpha"]  # the rule itself, on the same means
    assert [r["alpha"] for r in summarise(fixed) if r["best"]] == [3.0]  # what sweep-report marks
    d20 = got["mnist/d20"]
    assert d20["alpha"] is None and d20["rule_pick"] == 3.0 and not d20["meets_budget"]
    line = summary_md.recommendation_line("mnist/d20", d20)
    assert "no alpha meets the 1-nat budget, so no recommendation" in line and "alpha = 3, has test" in line
    assert "**alpha = 3** (test KL(z'||z) 0.900, ELBO -152.00" in summary_md.recommendation_line(
        "mnist/paper", paper)


def _logged_metric(elbo: float, kl: float) -> float:
    """What ConstrainedELBO logs at the end of an epoch with these validation metrics."""
    logged = {}
    module = SimpleNamespace(log=lambda key, value: logged.update({key: value}))
    trainer = SimpleNamespace(callback_metrics={"val/elbo": torch.tensor(elbo),
                                                "val/kl_consistency": torch.tensor(kl)})
    ConstrainedELBO().on_train_epoch_end(trainer, module)
    return float(logged["val/constrained_elbo"])


def test_changing_the_rule_in_one_place_changes_the_sweep_metric_the_report_and_the_summary(monkeypatch):
    fixed = fixed_paper()
    assert _logged_metric(-151.0, 1.02) == pytest.approx(-153.0, rel=1e-6)
    assert recommend(RECORDS)["mnist/paper"]["alpha"] == 3.0
    # another rule: the ELBO alone, KL ignored (the rule the module docstring rejects)
    monkeypatch.setattr(alpha_choice, "constrained_elbo", lambda elbo, kl, kl_target=1.0, penalty=100.0: elbo)
    assert _logged_metric(-151.0, 1.02) == pytest.approx(-151.0, rel=1e-6)  # the sweep metric
    assert [r["alpha"] for r in summarise(fixed) if r["best"]] == [0.0]  # sweep-report's mark
    assert recommend(RECORDS)["mnist/paper"]["rule_pick"] == 0.0  # the summary's recommendation


# --- the committed results/ and the README ---------------------------------------------------------
@pytest.fixture(scope="module")
def summary() -> dict:
    return json.loads((ROOT / "results" / "summary.json").read_text())


def test_results_recommend_what_the_rule_picks_from_their_runs(summary):
    assert json.dumps(recommend(summary["runs"]), sort_keys=True) == json.dumps(
        summary["recommendation"], sort_keys=True)


def test_readme_which_alpha_quotes_the_summary(summary):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Which alpha?"):]
    section = " ".join(section[:section.index("\n## ")].split())  # as read, whatever the line breaks
    for key in ("mnist/paper", "fashion_mnist/paper"):
        rec = summary["recommendation"][key]
        assert (f"**alpha = {rec['alpha']:g}** (test KL(z'||z) {rec['kl_consistency']:.3f}, "
                f"ELBO {rec['elbo']:.2f})") in section, key
        assert f"{rec['elbo_below_vae']:.2f}" in section, key
        paper_alpha = summary["results"][key.split("/")[0]]["paper"]["consistency"]["kl_consistency"]
        assert f"{paper_alpha['mean']:.2f}" in section, key  # alpha = 1, just over the budget
    for key in ("mnist/d20", "fashion_mnist/d20"):
        rec = summary["recommendation"][key]
        assert rec["alpha"] == 30 and f"{rec['elbo_below_vae']:.2f}" in section, key
    assert "At 20-D only alpha = 30 meets 1 nat" in section
    for flag in ("--model.alpha=1", "--model.alpha_mode=constrained --model.kl_target=",
                 "consistency-vae sweep"):
        assert flag in section, flag
