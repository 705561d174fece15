"""The statistics behind the reproduction's verdicts: pure functions of numbers (verdicts.py reads
the runs). Every test is two-sided at ``LEVEL``; "detectable" is the smallest true difference that
the test finds with probability ``POWER`` (from the noncentral t, scipy.stats.nct).

- ``paired``: per-seed pairs (alpha = 1 and alpha = 0 of one seed): the paired t-test
  (scipy.stats.ttest_rel), its 95% interval (t with n - 1 degrees of freedom, from
  ``confidence_interval``) and p.
- ``welch``: a difference of independent means, each part a variance of a mean with its n: standard
  error sqrt(sum of sd_k^2 / n_k) and Welch-Satterthwaite degrees of freedom (the constrained runs
  against the front).
- ``holm``: Holm-Bonferroni adjusted p-values of a family: a family declares any false difference
  with probability at most LEVEL, whatever the p-values' dependence.
- ``detectable``: the smallest difference found with probability POWER at a given level.

With 3 seeds a paired t-test has 2 degrees of freedom (critical t 4.30 at 5%): at 80% power it
finds only differences above about 3.3 per-seed standard deviations, and in a family of m Holm
starts at LEVEL / m, which asks for more. "No difference" therefore means "none larger than the
detectable difference", which each comparison reports.
"""

import math

import numpy as np
from scipy import stats
from scipy.optimize import brentq

LEVEL = 0.05  # two-sided; familywise where a family is adjusted (holm)
POWER = 0.8  # of "detectable"


def _t_result(diff: float, se: float, df: float, level: float = LEVEL) -> dict:
    """p and (1 - level) interval of a t statistic diff / se on df degrees of freedom; se = 0 (every
    seed the same: a count such as active units) gives p 0 for a non-zero difference, 1 for none."""
    if se == 0:
        return {"p": 1.0 if diff == 0 else 0.0, "ci": [diff, diff]}
    half = stats.t.ppf(1 - level / 2, df) * se
    return {"p": float(2 * stats.t.sf(abs(diff) / se, df)), "ci": [diff - half, diff + half]}


def detectable(se: float, df: float, level: float = LEVEL, power: float = POWER) -> float:
    """The smallest |difference| that a two-sided t-test at ``level`` (standard error ``se``, ``df``
    degrees of freedom) rejects with probability ``power``: P(|T'| > t_crit) = power, T' noncentral
    t with noncentrality difference / se. NaN where there is no test (df < 1 or se NaN)."""
    if math.isnan(se) or not df >= 1:
        return math.nan
    if se == 0:
        return 0.0
    crit = stats.t.ppf(1 - level / 2, df)

    def missed(nc: float) -> float:  # power(nc) - power; nct.cdf is NaN far in its tail, where it is 0
        low = np.nan_to_num(stats.nct.cdf(-crit, df, nc), nan=0.0)
        return float(stats.nct.sf(crit, df, nc) + low) - power

    top = 2 * crit + 4
    while missed(top) < 0:  # power rises with nc: widen until the root is inside
        top *= 2
    return brentq(missed, 0.0, top, xtol=1e-10) * se


def paired(ours: list[float], theirs: list[float], level: float = LEVEL) -> dict:
    """Paired t-test of ours - theirs (one pair per seed): n, mean, std of the differences (n - 1),
    se, df, p (unadjusted) and the (1 - level) interval (unadjusted, t with n - 1 df). With one pair
    there is no test: p and ci NaN. (The detectable difference depends on the family's size, so
    the caller adds it: ``detectable(se, df, level / m)``.)"""
    if len(ours) != len(theirs):
        raise ValueError(f"paired needs one value per seed on each side, got {len(ours)} and {len(theirs)}")
    diffs = np.asarray(ours, float) - np.asarray(theirs, float)
    n = len(diffs)
    mean = float(diffs.mean()) if n else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "std": math.nan, "se": math.nan, "df": 0, "p": math.nan,
                "ci": [math.nan, math.nan]}
    std = float(diffs.std(ddof=1))
    se, df = std / math.sqrt(n), n - 1
    if std == 0:
        result = _t_result(mean, 0.0, df, level)
    else:  # scipy's own test and interval; identical to _t_result(mean, se, df) up to rounding
        test = stats.ttest_rel(ours, theirs)
        interval = test.confidence_interval(1 - level)
        result = {"p": float(test.pvalue), "ci": [float(interval.low), float(interval.high)]}
    return {"n": n, "mean": mean, "std": std, "se": se, "df": df, **result}


def welch(diff: float, parts: list[tuple[float, int]], level: float = LEVEL) -> dict:
    """A difference of independent means: ``parts`` holds (variance of one mean, i.e. sd^2 / n, or a
    weighted sum of such; n of its seeds). se = sqrt(sum of the variances), degrees of freedom by
    Welch-Satterthwaite, (sum v)^2 / sum(v^2 / (n - 1)). None where a part has fewer than 2 seeds
    (no spread to test with)."""
    if any(n < 2 or math.isnan(v) for v, n in parts):
        return None
    var = sum(v for v, _ in parts)
    df = var ** 2 / sum(v ** 2 / (n - 1) for v, n in parts) if var > 0 else math.inf
    se = math.sqrt(var)
    return {"diff": diff, "se": se, "df": df, **_t_result(diff, se, df, level),
            "detectable": detectable(se, df, level)}


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given: the i-th smallest p times (m - i + 1),
    made non-decreasing in that order and capped at 1. Rejecting where adjusted p <= LEVEL keeps
    the chance of any false rejection in the family at most LEVEL."""
    if any(math.isnan(p) for p in pvalues):
        raise ValueError(f"holm needs a p-value for every test of the family, got {pvalues}")
    m, adjusted, running = len(pvalues), [math.nan] * len(pvalues), 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
