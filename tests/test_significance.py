"""The statistics of the verdicts (reproduction/significance.py) against independent references:
the t formulas written out, scipy's Welch test, Holm on a worked example, and the detectable
difference against a simulation of the test it describes. All float64."""

import math

import numpy as np
import pytest
from scipy import stats

from consistency_vae.reproduction import significance


def binomial_band(p: float, n: int, sigmas: float = 4.0) -> float:
    """How far a rate over n independent trials strays from p: sigmas binomial standard deviations
    (4: a false failure about once in 16,000 runs; the seeds are fixed, so it either passes or not)."""
    return sigmas * math.sqrt(p * (1 - p) / n)


def test_paired_is_the_t_test_of_the_differences_written_out():
    ours, theirs = [1.3, 2.1, 0.9], [1.0, 1.2, 1.1]  # differences 0.3, 0.9, -0.2
    got = significance.paired(ours, theirs)
    d = np.array(ours) - np.array(theirs)
    se = d.std(ddof=1) / math.sqrt(3)
    t = d.mean() / se
    half = stats.t.ppf(0.975, 2) * se
    assert got["n"] == 3 and got["df"] == 2
    assert got["mean"] == pytest.approx(d.mean(), rel=1e-12)  # float64 both sides, same inputs
    assert got["se"] == pytest.approx(se, rel=1e-12)  # float64 both sides, same inputs
    assert got["p"] == pytest.approx(2 * stats.t.sf(abs(t), 2), rel=1e-9)  # float64: two t.sf paths
    assert got["ci"] == pytest.approx([d.mean() - half, d.mean() + half], rel=1e-9)  # float64


def test_paired_without_spread_or_with_one_seed():
    same = significance.paired([2.0, 2.0, 2.0], [2.0, 2.0, 2.0])  # active units: identical counts
    assert same["p"] == 1.0 and same["ci"] == [0.0, 0.0]
    shifted = significance.paired([3.0, 3.0, 3.0], [2.0, 2.0, 2.0])  # +1 in every seed: t is infinite
    assert shifted["p"] == 0.0 and shifted["ci"] == [1.0, 1.0]
    one = significance.paired([3.0], [2.0])
    assert one["n"] == 1 and one["mean"] == 1.0 and math.isnan(one["p"]) and math.isnan(one["ci"][0])
    with pytest.raises(ValueError, match="one value per seed on each side, got 2 and 3"):
        significance.paired([1.0, 2.0], [1.0, 2.0, 3.0])


def test_welch_of_two_groups_is_scipys_unequal_variance_t_test():
    a, b = np.array([-155.6, -155.2, -154.7]), np.array([-155.0, -155.3, -155.4, -154.9])
    parts = [(a.var(ddof=1) / 3, 3), (b.var(ddof=1) / 4, 4)]
    got = significance.welch(a.mean() - b.mean(), parts)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert got["p"] == pytest.approx(ref.pvalue, rel=1e-9)  # float64, same inputs
    assert got["df"] == pytest.approx(ref.df, rel=1e-9)  # float64, same inputs
    low, high = ref.confidence_interval(0.95)
    assert got["ci"] == pytest.approx([low, high], rel=1e-9)  # float64, same inputs
    assert significance.welch(1.0, [(0.1, 3), (0.2, 1)]) is None  # one seed: no spread to test with


def test_holm_on_a_worked_example():
    # sorted: 0.01 x 4 = 0.04; 0.02 x 3 = 0.06; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> kept at 0.06
    assert significance.holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert significance.holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert significance.holm([]) == []
    with pytest.raises(ValueError, match="a p-value for every test"):
        significance.holm([0.01, math.nan])


def test_three_seeds_detect_about_three_standard_deviations():
    # 2 degrees of freedom: 80% power at 5% needs 3.26 per-seed sds; a family of 4 at 0.05 / 4, more
    assert significance.detectable(1 / math.sqrt(3), 2) == pytest.approx(3.264, abs=1e-3)
    assert significance.detectable(1 / math.sqrt(3), 2, 0.05 / 4) > 5
    assert significance.detectable(0.0, 2) == 0.0
    assert math.isnan(significance.detectable(math.nan, 2)) and math.isnan(significance.detectable(1.0, 0))


@pytest.mark.parametrize("n, level", [(3, 0.05), (3, 0.0125), (10, 0.05)])
def test_the_detectable_difference_is_found_with_80_percent_power(n, level):
    """Simulate the test it describes: 4000 paired designs of n seeds whose true difference is the
    detectable one; the share that the t-test rejects at ``level`` is 80%."""
    rng = np.random.default_rng(0)
    sd = 0.7
    delta = significance.detectable(sd / math.sqrt(n), n - 1, level)
    diffs = rng.normal(delta, sd, size=(4000, n))  # the t-test of each row, vectorised
    t = diffs.mean(1) / (diffs.std(1, ddof=1) / math.sqrt(n))
    found = np.mean(2 * stats.t.sf(np.abs(t), n - 1) <= level)
    assert abs(found - 0.8) < binomial_band(0.8, 4000)
