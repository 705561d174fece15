"""The reproduction's verdicts (reproduction/verdicts.py) on hand-made records whose answers are
worked out in the comments: the front read in log KL, the constrained runs against it (Welch,
Holm), one verdict per claim (paired t, Holm), and image noise against seed spread; and the rule
on simulated claims with a known answer: 5% of families declare a difference where there is none,
and a large effect is found."""

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from consistency_vae.reproduction import significance, summary_md, verdicts
from consistency_vae.reproduction.reproduce import SWEEPS
from consistency_vae.reproduction.runs import Run
from consistency_vae.reproduction.summary import planned_groups, seeds_per_group
from consistency_vae.sweep.sweep_file import grid_points, load_sweep
from tests.conftest import ROOT


def run(alpha, seed, kl, elbo, setting="paper", dataset="mnist", kl_target=None, **metrics):
    return {"dataset": dataset, "setting": setting, "kl_target": kl_target, "alpha_init": alpha,
            "seed": seed, "model": "constrained" if kl_target else f"alpha{alpha:g}",
            "kl_consistency": kl, "elbo": elbo, **metrics}


# fixed alphas, 2 seeds each: (alpha, [(kl, elbo), ...]); means: KL 4, 2, 1; ELBO -100, -102, -106
FIXED = [(0.0, [(3.9, -99.0), (4.1, -101.0)]),  # ELBO std sqrt(2)
         (1.0, [(2.0, -102.0), (2.0, -102.0)]),  # std 0
         (3.0, [(0.9, -105.0), (1.1, -107.0)])]  # std sqrt(2)


def fixed_records(**extra):
    return [run(a, s, kl, elbo, **extra) for a, seeds in FIXED for s, (kl, elbo) in enumerate(seeds)]


def test_an_alpha_beaten_on_both_kl_and_elbo_is_not_on_the_front():
    dominated = [run(0.3, s, 2.5, -103.0) for s in (0, 1)]  # KL 2.5 > 2 and ELBO -103 < -102 (alpha 1)
    points = verdicts.front(fixed_records() + dominated, "mnist", "paper")
    assert [p["alpha"] for p in points] == [3.0, 1.0, 0.0]


def test_the_front_is_read_linearly_in_log_kl_and_never_extrapolated():
    points = verdicts.front(fixed_records(), "mnist", "paper")
    assert [p["alpha"] for p in points] == [3.0, 1.0, 0.0]  # increasing mean KL
    at = verdicts.front_at(points, math.sqrt(2.0))  # halfway between KL 1 and 2 in log KL
    assert at["elbo"] == pytest.approx(-104.0) and at["between_alphas"] == [3.0, 1.0]
    # a weighted mean of two independent means: 0.5^2 sqrt(2)^2 / 2 + 0.5^2 0^2 / 2
    assert [v for v, _ in at["parts"]] == pytest.approx([0.25, 0.0]) and at["se"] == pytest.approx(0.5)
    assert [n for _, n in at["parts"]] == [2, 2]
    assert at["n"] == 2  # the fewer seeds of the two alphas around it
    assert verdicts.front_at(points, 2.0)["elbo"] == pytest.approx(-102.0)  # on a point
    assert verdicts.front_at(points, 0.5) is None and verdicts.front_at(points, 5.0) is None
    assert not at["flat"]


def test_beyond_its_largest_kl_the_front_is_flat_up_to_the_largest_fixed_kl():
    # alpha 0.1 beats alpha 0 on both (KL 3 < 4, ELBO -99 > -100): the front ends at KL 3
    records = fixed_records() + [run(0.1, s, 3.0, -99.0) for s in (0, 1)]
    points = verdicts.front(records, "mnist", "paper")
    assert [p["alpha"] for p in points] == [3.0, 1.0, 0.1]
    at = verdicts.front_at(points, 3.5, reach=4.0)  # alpha 0 reaches 3.5, with a lower ELBO than -99
    assert at["flat"] and at["elbo"] == pytest.approx(-99.0) and at["between_alphas"] == [0.1, 0.1]
    assert at["parts"] == [(0.0, 2)]  # alpha 0.1 alone, std 0
    assert verdicts.front_at(points, 3.5) is None and verdicts.front_at(points, 4.5, reach=4.0) is None
    constrained = [run(1.0, s, 3.5, -99.5, kl_target=3.5) for s in (0, 1)]
    row = verdicts.constrained_vs_front(records + constrained)[0]
    assert row["front"]["flat"] and row["elbo_minus_front"] == pytest.approx(-0.5)


def test_constrained_runs_are_judged_against_epsilon_and_the_front_by_welch_and_holm():
    records = fixed_records() + [
        # eps 1: KL 1.0 on average, on alpha 3's point (ELBO -105, -107); ELBO far above it (Welch's
        # df is about 1 with 2 seeds of the front: only a large margin is found)
        run(1.0, 0, 0.95, -60.0, kl_target=1.0), run(1.0, 1, 1.05, -61.0, kl_target=1.0),
        run(1.0, 2, 1.0, -60.5, kl_target=1.0),
        # eps 1.5: KL 1.2 and 1.6 (+6.7% worst: within 10%), mean sqrt(2): the front there is -104
        # (se 0.5); ELBO -103.5 and -104.5: on it
        run(1.0, 0, 1.2, -103.5, kl_target=1.5), run(1.0, 1, 1.628, -104.5, kl_target=1.5),
        # eps 3.5: one run 20% over; KL 4 on alpha 0's point (ELBO -99, -101); ELBO far below it
        run(1.0, 0, 4.2, -130.0, kl_target=3.5), run(1.0, 1, 3.8, -131.0, kl_target=3.5),
        # eps 0.5: KL 0.5, below the front's range
        run(1.0, 0, 0.5, -108.0, kl_target=0.5),
        # eps 3: one seed, inside the front: no spread to test with
        run(1.0, 0, 3.0, -150.0, kl_target=3.0)]
    rows = {r["kl_target"]: r for r in verdicts.constrained_vs_front(records)}
    on = rows[1.5]
    assert on["within_10pct"] and on["worst_excess"] == pytest.approx(1.628 / 1.5 - 1)
    assert on["front"]["elbo"] == pytest.approx(-104.0, abs=1e-3)  # mean KL 1.414 ~ sqrt(2)
    # three independent parts: the constrained runs' 0.5 / 2 and the front's two alphas
    assert on["test"]["se"] == pytest.approx(math.sqrt(0.25 + on["front"]["se"] ** 2))
    # the two ends read on a point of one alpha: Welch's two-sample test, as scipy computes it
    above, below = rows[1.0], rows[3.5]
    ref = {eps: stats.ttest_ind([r["elbo"] for r in records if r["kl_target"] == eps],
                                [r["elbo"] for r in records if r["kl_target"] is None
                                 and r["alpha_init"] == alpha], equal_var=False)
           for eps, alpha in ((1.0, 3.0), (3.5, 0.0))}
    assert above["test"]["p"] == pytest.approx(ref[1.0].pvalue, rel=1e-9)  # float64, same inputs
    assert below["test"]["p"] == pytest.approx(ref[3.5].pvalue, rel=1e-9)  # float64
    assert below["test"]["ci"] == pytest.approx(list(ref[3.5].confidence_interval(0.95)), rel=1e-9)  # float64
    # Holm over the 3 tested targets
    tested = [rows[e] for e in (1.0, 1.5, 3.5)]
    holm = significance.holm([r["test"]["p"] for r in tested])
    assert [r["p_holm"] for r in tested] == pytest.approx(holm)
    assert [r["position"] for r in tested] == ["above", "on", "below"]
    assert not below["within_10pct"] and below["worst_excess"] == pytest.approx(0.2)
    assert on["detectable"] == pytest.approx(significance.detectable(on["test"]["se"], on["test"]["df"],
                                                                     0.05 / 3))
    outside = rows[0.5]
    assert outside["front"] is None and outside["position"] is None
    assert math.isnan(outside["elbo"]["std"])  # one seed: no spread, not 0
    alone = rows[3.0]
    assert alone["elbo_minus_front"] < -40 and alone["test"] is None and alone["position"] is None


def test_a_comparison_reports_its_image_bound_beside_the_test():
    # KL SE 0.1 and 0.2 (seed 0), 0.3 and 0.4 (seed 1): bound sqrt((0.01 + 0.04 + 0.09 + 0.16) / 2),
    # not divided by the seeds: every run shares the test images
    two = [run(a, s, kl, -100.0, kl_consistency_se=se) for a, s, kl, se in
           ((0.0, 0, 2.0, 0.1), (1.0, 0, 1.0, 0.2), (0.0, 1, 2.1, 0.3), (1.0, 1, 1.0, 0.4))]
    d = verdicts.paired_difference(two, "mnist", "paper", "kl_consistency")
    assert d["image_bound"] == pytest.approx(math.sqrt(0.3 / 2))
    assert d["diff"]["mean"] == pytest.approx(-1.05) and d["diff"]["n"] == 2
    assert math.isnan(verdicts.paired_difference(fixed_records(), "mnist", "paper", "kl_consistency")
                      ["image_bound"])  # no KEY_se: unknown


def claim_records(kl_vae, kl_ours, gap_vae, gap_ours, setting):
    return ([run(0.0, s, kl, -100.0, setting=setting, iwae_gap=g, iwae_gap_se=0.01) for s, (kl, g) in
             enumerate(zip(kl_vae, gap_vae, strict=True))]
            + [run(1.0, s, kl, -101.0, setting=setting, iwae_gap=g, iwae_gap_se=0.01) for s, (kl, g) in
               enumerate(zip(kl_ours, gap_ours, strict=True))])


def test_each_claim_gets_one_verdict_from_its_family_of_comparisons():
    records = (claim_records([3.0, 3.2, 3.1], [0.8, 0.9, 0.85], [5.0, 5.5, 5.2], [4.0, 4.6, 4.1], "paper")
               + claim_records([9.0, 9.5, 9.2], [2.0, 2.1, 2.0], [5.0, 5.5, 5.2], [6.0, 6.6, 6.1], "d20"))
    found = verdicts.claims(records)
    drift = found["drift"]
    assert drift["verdict"] == "holds" and drift["count"]["better"] == 2 and drift["family_size"] == 2
    by = {t["setting"]: t for t in drift["tests"]}
    assert by["paper"]["diff"]["mean"] == pytest.approx(-2.25)
    assert by["paper"]["vae"]["mean"] == pytest.approx(3.1)
    assert [by[s]["p_holm"] for s in ("paper", "d20")] == pytest.approx(
        significance.holm([by[s]["diff"]["p"] for s in ("paper", "d20")]))
    assert by["paper"]["detectable"] == pytest.approx(
        significance.detectable(by["paper"]["diff"]["se"], 2, 0.05 / 2))
    # the gap: -1.0, -0.9, -1.1 at 2-D (better), +1.0, +1.1, +0.9 at 20-D (worse): partly
    gap = found["elbo_to_loglik"]
    assert gap["verdict"] == "partly holds" and gap["count"] == {"better": 1, "no difference": 0, "worse": 1}
    assert all(t["beyond_image_bound"] for t in gap["tests"])  # 1 nat against 1.96 x 0.014
    assert found["inference"]["verdict"] == "not measured"  # no amortization_gap in the records
    noisy = claim_records([3.0, 3.2, 2.9], [3.1, 2.8, 3.0], [5.0] * 3, [5.0] * 3, "paper")
    assert verdicts.claims(noisy)["drift"]["verdict"] == "does not hold"
    one_seed = claim_records([3.0], [0.5], [5.0], [5.0], "paper")
    assert verdicts.claims(one_seed)["drift"]["verdict"] == "not tested (1 seed)"
    assert verdicts.claims(one_seed)["drift"]["tests"][0]["direction"] == "untested (1 seed)"


def test_the_elbo_gap_is_to_the_quadrature_log_likelihood_where_the_runs_have_it():
    """Claim 2 at a 2-D latent: log p(x) by quadrature (exact up to the grid), not the IWAE bound
    below it; at 20-D, and in runs evaluated before the quadrature, the IWAE bound."""
    records = (claim_records([3.0, 3.2, 3.1], [0.8, 0.9, 0.85], [5.0, 5.5, 5.2], [4.0, 4.6, 4.1], "paper")
               + claim_records([9.0, 9.5, 9.2], [2.0, 2.1, 2.0], [5.0, 5.5, 5.2], [6.0, 6.6, 6.1], "d20"))
    # at 2-D the IWAE gap narrows by about 1 nat, the gap to log p(x) widens by 0.5, 0.4, 0.6
    quadrature = {(0.0, 0): 5.1, (0.0, 1): 5.6, (0.0, 2): 5.3, (1.0, 0): 5.6, (1.0, 1): 6.0, (1.0, 2): 5.9}
    with_quadrature = [{**r, "log_likelihood_gap": quadrature[r["alpha_init"], r["seed"]],
                        "log_likelihood_gap_se": 0.01} if r["setting"] == "paper" else r for r in records]
    gap = verdicts.claims(with_quadrature)["elbo_to_loglik"]
    by = {t["setting"]: t for t in gap["tests"]}
    assert by["paper"]["key"] == "log_likelihood_gap" and by["d20"]["key"] == "iwae_gap"
    assert by["paper"]["diff"]["mean"] == pytest.approx(0.5) and by["paper"]["direction"] == "worse"
    assert gap["verdict"] == "does not hold" and gap["count"] == {"better": 0, "no difference": 0, "worse": 2}
    assert "log p(x) by quadrature where the runs have it" in gap["claim"]
    lines = "\n".join(summary_md.claims_section({"elbo_to_loglik": gap}))
    assert "by quadrature" in lines and "MNIST 2-D, log p(x) - ELBO [nats]: 5.33 ± 0.25 -> 5.83" in lines
    assert "MNIST 20-D, IWAE - ELBO gap [nats]: 5.23" in lines
    # one run without it (evaluated before the quadrature): that setting's every seed uses IWAE
    one_missing = [{k: v for k, v in r.items() if not k.startswith("log_likelihood")}
                   if (r["setting"], r["alpha_init"], r["seed"]) == ("paper", 1.0, 2) else r
                   for r in with_quadrature]
    old = verdicts.claims(one_missing)["elbo_to_loglik"]
    assert {t["key"] for t in old["tests"]} == {"iwae_gap"} and old["verdict"] == "partly holds"
    assert old["claim"] == verdicts.claims(records)["elbo_to_loglik"]["claim"] == (
        "the ELBO approaches the data log-likelihood (IWAE - ELBO gap shrinks)")
    only_2d = verdicts.claims([r for r in with_quadrature if r["setting"] == "paper"])["elbo_to_loglik"]
    assert only_2d["claim"].endswith("(log p(x) - ELBO gap shrinks, log p(x) by quadrature)")


def simulated_families(rng, families: int, m: int, effect: float, seeds: int = 3) -> list[list[dict]]:
    """``families`` claims of ``m`` comparisons each, decided by the rule itself: per comparison,
    alpha = 0 and alpha = 1 per seed with seed-to-seed noise sd 1 (shared by the pair, as a seed
    shapes both runs alike) and the pair's own noise sd 1, the consistency VAE ``effect`` higher."""
    out = []
    for _ in range(families):
        family = []
        for _ in range(m):
            seed_noise = rng.normal(size=seeds)
            vae = 5.0 + seed_noise + rng.normal(size=seeds)
            ours = 5.0 + effect + seed_noise + rng.normal(size=seeds)
            family.append({"diff": significance.paired(list(ours), list(vae)), "better": "higher"})
        verdicts.decide(family)
        out.append(family)
    return out


@pytest.mark.parametrize("m", [1, 4])
def test_with_no_effect_a_family_declares_a_difference_5_percent_of_the_time(m):
    """Holm rejects something iff the smallest of m independent uniform p-values is <= 0.05 / m:
    1 - (1 - 0.05 / m)^m of the families (0.0500, 0.0491). The old rule (|mean| > std of the
    per-seed differences) fired in 22% of single comparisons, 64% of families of 4."""
    families = simulated_families(np.random.default_rng(23), 2000, m, effect=0.0)
    rate = np.mean([any(t["direction"] != "no difference" for t in f) for f in families])
    expected = 1 - (1 - 0.05 / m) ** m
    assert abs(rate - expected) < 4 * math.sqrt(expected * (1 - expected) / 2000)


def test_a_large_effect_is_found_and_the_detectable_one_at_least_80_percent_of_the_time():
    rng = np.random.default_rng(24)
    sd = math.sqrt(2)  # of a per-seed difference: two runs' own noise, sd 1 each
    big = [t for f in simulated_families(rng, 250, 4, effect=20 * sd) for t in f]
    assert np.mean([t["direction"] == "better" for t in big]) > 0.99
    # every comparison of a family with the detectable effect: Holm is at least Bonferroni's 80%
    effect = significance.detectable(sd / math.sqrt(3), 2, 0.05 / 4)
    found = np.mean([t["direction"] == "better"
                     for f in simulated_families(rng, 1000, 4, effect=effect) for t in f])
    assert found > 0.8 - 4 * math.sqrt(0.8 * 0.2 / 4000)


def test_noise_sets_the_image_standard_error_against_the_seed_spread():
    records = [{**r, "kl_consistency_se": 0.01 * (i + 1)} for i, r in enumerate(fixed_records())]
    rows = {r["key"]: r for r in verdicts.noise(records)}
    assert rows["kl_consistency"]["image_se"] == pytest.approx(0.035)  # median of 0.01 .. 0.06
    # KL std per alpha: 0.141, 0, 0.141 -> median 0.141; ELBO: sqrt(2), 0, sqrt(2)
    assert rows["kl_consistency"]["seed_std"] == pytest.approx(math.sqrt(0.02))
    assert rows["elbo"]["seed_std"] == pytest.approx(math.sqrt(2)) and math.isnan(rows["elbo"]["image_se"])


def test_a_partial_reproduction_names_the_groups_with_fewer_seeds():
    records = fixed_records() + [run(1.0, 0, 1.5, -103.0, kl_target=1.5)]
    got = seeds_per_group(records)  # without the sweep files (--from-runs): the most any group has
    assert got == {"most": 2, "groups": 4, "short": {"mnist/paper/eps1.5": 1}}
    warning = summary_md.partial_warning(got)[0]
    assert "1 of 4 run groups have fewer than 2 seeds: mnist/paper/eps1.5 (1)" in warning
    # the files ask 3 seeds of alpha 0, 2 of alpha 1, 1 of epsilon 1.5; alpha 3, which they lack: the most
    planned = {"mnist/paper/alpha0": 3, "mnist/paper/alpha1": 2, "mnist/paper/eps1.5": 1}
    assert seeds_per_group(records, planned) == {"most": 2, "groups": 4, "short": {"mnist/paper/alpha0": 2},
                                                 "expected": {"mnist/paper/alpha0": 3}}
    # a reproduction in pieces: groups the files ask that have no run yet are named, not averaged in
    got = seeds_per_group(records, {**planned, "mnist/d20/alpha0": 10, "mnist/d20/alpha1": 10})
    assert got["missing"] == ["mnist/d20/alpha0", "mnist/d20/alpha1"] and got["planned"] == 5
    warnings = summary_md.partial_warning(got)
    assert ("2 of the sweep files' 5 run groups have no run yet: mnist/d20/alpha0, mnist/d20/alpha1"
            in warnings[0])
    assert "1 of 4 run groups have fewer seeds than the sweep files ask" in warnings[2]


def design_records(seeds: int | None = None) -> list[dict]:
    """One record per grid point of the reproduction's sweep files (of the first ``seeds`` seeds)."""
    out = []
    for f in SWEEPS:
        for p in grid_points(load_sweep(ROOT / f)):
            eps = p.get("model.kl_target")
            r = Run(Path(), p["data.dataset"], p["model.latent_dim"], p["seed_everything"],
                    p.get("model.alpha", 1.0), eps, 25)
            if seeds is None or r.seed < seeds:
                out.append(run(r.alpha, r.seed, 1.0, -100.0, setting=r.setting, dataset=r.dataset,
                               kl_target=eps))
    return out


def test_the_seeds_each_group_should_have_come_from_the_sweep_files():
    planned = planned_groups([ROOT / f for f in SWEEPS])
    assert sum(planned.values()) == 220 and len(planned) == 2 * 2 * (7 + 2)  # alphas and epsilons
    assert {k: n for k, n in planned.items() if n != 5} == {
        f"{d}/{s}/alpha{a}": 10 for d in ("mnist", "fashion_mnist") for s in ("paper", "d20") for a in (0, 1)}
    complete = design_records()
    assert len(complete) == 220
    # 10 seeds of alpha 0 and 1, 5 of the rest: by the files, nothing is short; the most any group
    # has would call all 28 groups of 5 seeds short
    assert seeds_per_group(complete, planned)["short"] == {}
    assert len(seeds_per_group(complete)["short"]) == 28
    # 3 seeds of every group (results/ until the 220-run reproduction): every group short of the files
    three = seeds_per_group(design_records(seeds=3), planned)
    assert three["short"] == {k: 3 for k in planned} and three["expected"] == planned
    assert seeds_per_group(design_records(seeds=3))["short"] == {}  # by the most any group has: whole
    warning = summary_md.partial_warning(three)[0]
    assert "36 of 36 run groups have fewer seeds than the sweep files ask" in warning
    assert "mnist/paper/alpha0 (3 of 10)" in warning and "mnist/paper/alpha0.1 (3 of 5)" in warning
