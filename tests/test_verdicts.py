"""The reproduction's verdicts (reproduction/verdicts.py) on hand-made records whose answers are
worked out in the comments: the front read in log KL, the constrained runs against it, one
verdict per claim, and image noise against seed spread."""

import math

import pytest

from consistency_vae.reproduction import verdicts
from consistency_vae.reproduction.summary import seeds_per_group


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
    assert at["std"] == pytest.approx(math.sqrt(2) / 2)  # halfway between sqrt(2) and 0
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
    assert verdicts.front_at(points, 3.5) is None and verdicts.front_at(points, 4.5, reach=4.0) is None
    constrained = [run(1.0, s, 3.5, -99.5, kl_target=3.5) for s in (0, 1)]
    row = verdicts.constrained_vs_front(records + constrained)[0]
    assert row["front"]["flat"] and row["elbo_minus_front"] == pytest.approx(-0.5)


def test_constrained_runs_are_judged_against_epsilon_and_the_front():
    records = fixed_records() + [
        # eps 1.5: KL 1.5 and 1.6 (+6.7% worst: within 10%); front at KL 1.55: t = log(1.55)/log(2)
        run(1.0, 0, 1.5, -103.0, kl_target=1.5), run(1.0, 1, 1.6, -104.0, kl_target=1.5),
        # eps 1.0: one run 20% over; ELBO far below the front
        run(1.0, 0, 1.2, -110.0, kl_target=1.0), run(1.0, 1, 1.0, -110.0, kl_target=1.0),
        # eps 0.5: KL 0.5, below the front's range
        run(1.0, 0, 0.5, -108.0, kl_target=0.5),
        # eps 3: one seed, inside the front: no spread to judge it by
        run(1.0, 0, 3.0, -150.0, kl_target=3.0)]
    rows = {r["kl_target"]: r for r in verdicts.constrained_vs_front(records)}
    ok = rows[1.5]
    assert ok["within_10pct"] and ok["worst_excess"] == pytest.approx(1.6 / 1.5 - 1)
    t = math.log(1.55) / math.log(2.0)
    front_elbo = (1 - t) * -106.0 + t * -102.0
    assert ok["front"]["elbo"] == pytest.approx(front_elbo)
    assert ok["elbo_minus_front"] == pytest.approx(-103.5 - front_elbo)
    sigma = math.hypot(math.sqrt(0.5), (1 - t) * math.sqrt(2))  # constrained std, front std
    assert ok["sigma"] == pytest.approx(sigma)
    assert ok["on_or_above_front"] == (-103.5 - front_elbo >= -sigma)
    bad = rows[1.0]
    assert not bad["within_10pct"] and bad["worst_excess"] == pytest.approx(0.2)
    assert bad["on_or_above_front"] is False  # -110 against about -104.6, sigma about 1
    outside = rows[0.5]
    assert outside["front"] is None and outside["on_or_above_front"] is None
    assert math.isnan(outside["elbo"]["std"])  # one seed: no spread, not 0
    alone = rows[3.0]
    assert alone["elbo_minus_front"] < -40 and alone["on_or_above_front"] is None  # not "no": unknown


@pytest.mark.parametrize("diffs, better, expected", [
    ([-1.0, -1.2, -0.8], "lower", "better"),  # mean -1, std 0.2: beyond the spread
    ([-1.0, 0.5, -1.0], "lower", "no difference"),  # mean -0.5, std 0.87: within it
    ([0.3, 0.4, 0.2], "lower", "worse"),
    ([0.3, 0.4, 0.2], "higher", "better"),
    ([-0.1], "lower", "better"),  # one seed: the sign only
])
def test_a_difference_counts_only_beyond_the_spread_over_seeds(diffs, better, expected):
    assert verdicts.direction(verdicts.stats(diffs), better) == expected


def test_a_difference_within_twice_its_image_noise_is_no_difference():
    # one seed each side, KL SE 0.03 per run: the mean difference's image SE is sqrt(0.03^2 * 2)
    records = [run(0.0, 0, 1.30, -100.0, kl_consistency_se=0.03), run(1.0, 0, 1.25, -100.0,
                                                                      kl_consistency_se=0.03)]
    d = verdicts.paired_difference(records, "mnist", "paper", "kl_consistency")
    assert d["image_se"] == pytest.approx(math.sqrt(2) * 0.03)
    assert verdicts.direction(d["diff"], "lower", d["image_se"]) == "no difference"  # 0.05 < 0.085
    records[1]["kl_consistency"] = 1.2  # 0.1 > 0.085
    d = verdicts.paired_difference(records, "mnist", "paper", "kl_consistency")
    assert verdicts.direction(d["diff"], "lower", d["image_se"]) == "better"
    # two seeds: the mean of the variances over seeds, over n
    two = [run(a, s, kl, -100.0, kl_consistency_se=se) for a, s, kl, se in
           ((0.0, 0, 2.0, 0.1), (1.0, 0, 1.0, 0.2), (0.0, 1, 2.0, 0.3), (1.0, 1, 1.0, 0.4))]
    d = verdicts.paired_difference(two, "mnist", "paper", "kl_consistency")
    assert d["image_se"] == pytest.approx(math.sqrt((0.01 + 0.04 + 0.09 + 0.16) / 2 / 2))


def claim_records(kl_vae, kl_ours, gap_vae, gap_ours, setting):
    return ([run(0.0, s, kl, -100.0, setting=setting, iwae_gap=g) for s, (kl, g) in
             enumerate(zip(kl_vae, gap_vae, strict=True))]
            + [run(1.0, s, kl, -101.0, setting=setting, iwae_gap=g) for s, (kl, g) in
               enumerate(zip(kl_ours, gap_ours, strict=True))])


def test_each_claim_gets_one_verdict_from_every_setting():
    records = (claim_records([3.0, 3.2], [0.8, 0.9], [5.0, 5.5], [4.0, 4.2], "paper")  # both better
               + claim_records([9.0, 9.5], [2.0, 2.1], [5.0, 5.5], [5.6, 6.2], "d20"))  # gap worse
    found = verdicts.claims(records)
    assert found["drift"]["verdict"] == "holds" and found["drift"]["count"]["better"] == 2
    drift = {t["setting"]: t for t in found["drift"]["tests"]}
    assert drift["paper"]["diff"]["mean"] == pytest.approx(-2.25)
    assert drift["paper"]["vae"]["mean"] == pytest.approx(3.1)
    assert found["elbo_to_loglik"]["verdict"] == "partly holds"
    assert found["inference"]["verdict"] == "not measured"  # no amortization_gap in the records
    one_seed = claim_records([3.0], [3.5], [5.0], [5.0], "paper")
    assert verdicts.claims(one_seed)["drift"]["verdict"] == "does not hold (1 seed)"


def test_noise_sets_the_image_standard_error_against_the_seed_spread():
    records = [{**r, "kl_consistency_se": 0.01 * (i + 1)} for i, r in enumerate(fixed_records())]
    rows = {r["key"]: r for r in verdicts.noise(records)}
    assert rows["kl_consistency"]["image_se"] == pytest.approx(0.035)  # median of 0.01 .. 0.06
    # KL std per alpha: 0.141, 0, 0.141 -> median 0.141; ELBO: sqrt(2), 0, sqrt(2)
    assert rows["kl_consistency"]["seed_std"] == pytest.approx(math.sqrt(0.02))
    assert rows["elbo"]["seed_std"] == pytest.approx(math.sqrt(2)) and math.isnan(rows["elbo"]["image_se"])


def test_a_partial_reproduction_names_the_groups_with_fewer_seeds():
    records = fixed_records() + [run(1.0, 0, 1.5, -103.0, kl_target=1.5)]
    got = seeds_per_group(records)
    assert got == {"most": 2, "groups": 4, "short": {"mnist/paper/eps1.5": 1}}
