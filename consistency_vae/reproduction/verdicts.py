"""The questions the reproduction answers, from its run records (summary.record): pure functions.
The tests themselves (paired t, Welch, Holm, the detectable difference) are in significance.py.

- ``front``: the fixed-alpha front of one setting, mean ± std over seeds of test KL(z'||z) and the
  test ELBO of each alpha that no other alpha beats on both; ``front_at`` reads it at any KL
  inside its range.
- ``constrained_vs_front``: does each constrained epsilon end within 10% of epsilon, and is its
  mean ELBO above, on or below the front at the same KL (Welch t, Holm over the targets)?
- ``claims``: one verdict per claim of the paper (holds, partly holds, does not hold), each from the
  plain VAE (alpha = 0) against the paper's consistency VAE (alpha = 1), paired by seed: a paired
  t-test per setting and metric, Holm-Bonferroni over the claim's comparisons (its family).
- ``noise``: how large one run's standard error over test images is against the spread over seeds.

What varies and what is held fixed. Every run is evaluated on the same test images with the same
eps per image (noise.eval_noise is seeded by the image's index), so the evaluation is one draw that
all runs share, not a fresh draw per seed: the spread of the per-seed differences is training noise
alone, and the tests are conditional on the test set and its eval draw, as the paper's numbers are.
Inflating their variance by each run's image SE^2 / n would count a shared draw as n independent
ones. How far another set of test images could move a difference is bounded by the image bound,
sqrt(mean over seeds of SE_0^2 + SE_1^2) (from each run's ``KEY_se``; the two models' per-image
values on the same images correlate positively), which does not shrink with more seeds: each
comparison reports it and whether its mean difference lies beyond 1.96 times it.
"""

import math
import statistics

from consistency_vae.reproduction import significance
from consistency_vae.reproduction.common import TOLERANCE, group
from consistency_vae.reproduction.significance import LEVEL
from consistency_vae.sweep.report import mean_std

# the image bound's two-sided band (a mean over thousands of images: normal), 1.96 at 5%
IMAGE_Z = statistics.NormalDist().inv_cdf(1 - LEVEL / 2)


def stats(values: list[float]) -> dict:
    """Mean, sample std (NaN for one value) and n of the finite values."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "n": len(values)}


def fixed_runs(records: list[dict], dataset: str, setting: str) -> list[dict]:
    return [r for r in records if r["dataset"] == dataset and r["setting"] == setting
            and r["kl_target"] is None]


def settings(records: list[dict]) -> list[tuple[str, str]]:
    """(dataset, setting) pairs, the paper's 2-D latent first."""
    return sorted({(r["dataset"], r["setting"]) for r in records},
                  key=lambda ds: (ds[0], ds[1] != "paper", ds[1]))


def by_alpha(records: list[dict], dataset: str, setting: str, keys: tuple[str, ...]) -> list[dict]:
    """One row per fixed alpha, in increasing alpha: {alpha, n, key: stats over seeds}."""
    runs = fixed_runs(records, dataset, setting)
    rows = []
    for alpha in sorted({r["alpha_init"] for r in runs}):
        seeds = [r for r in runs if r["alpha_init"] == alpha]
        rows.append({"alpha": alpha, "n": len(seeds), **{k: stats([r.get(k, math.nan) for r in seeds])
                                                         for k in keys}})
    return rows


def front(records: list[dict], dataset: str, setting: str) -> list[dict]:
    """The fixed-alpha front: {alpha, n, kl_consistency, elbo} of the alphas that no other alpha
    beats on both (mean over seeds: a lower KL and a higher ELBO), in increasing mean KL. Reading
    it at a KL gives the best ELBO that a fixed alpha reaches there."""
    rows = by_alpha(records, dataset, setting, ("kl_consistency", "elbo"))
    rows = sorted((r for r in rows if r["kl_consistency"]["n"]), key=lambda r: r["kl_consistency"]["mean"])
    best, kept = -math.inf, []
    for r in rows:  # the upper envelope: each kept alpha has a higher ELBO than every lower KL's
        if r["elbo"]["mean"] > best:
            kept.append(r)
            best = r["elbo"]["mean"]
    return kept


def largest_kl(records: list[dict], dataset: str, setting: str) -> float | None:
    """The largest mean test KL(z'||z) of any fixed alpha: how far the front reaches, flat past its
    last point (``front_at``); None without fixed-alpha runs."""
    fixed = by_alpha(records, dataset, setting, ("kl_consistency",))
    return max((r["kl_consistency"]["mean"] for r in fixed if r["kl_consistency"]["n"]), default=None)


def front_at(points: list[dict], kl: float, reach: float | None = None) -> dict | None:
    """The front's ELBO at test KL ``kl``, linear in log KL between the two alphas around it, with
    the standard error of that weighted mean of two independent means, ``se`` = sqrt(sum of
    w^2 sd^2 / n), and ``parts``: each alpha's (w^2 sd^2 / n, n) for the Welch test; ``n``: the fewer
    seeds of the two. Beyond the front's largest KL, up to ``reach`` (``largest_kl``: the largest
    mean KL of any fixed alpha), it is flat: every alpha there drifts more and has a lower ELBO than
    the front's last point (the plain VAE, when a small alpha beats it on both), so that point is the
    best a fixed alpha does at a KL of at most ``kl`` (``flat``: True). None below the front's
    smallest KL or beyond ``reach`` (no extrapolation)."""
    def read(weighted: list[tuple[float, dict]], flat: bool) -> dict:
        noisy = [(w, p["elbo"]) for w, p in weighted if w > 0]  # an alpha of weight 0 adds no noise
        parts = [(w * w * e["std"] ** 2 / e["n"], e["n"]) for w, e in noisy]
        return {"elbo": sum(w * p["elbo"]["mean"] for w, p in weighted),
                "se": math.sqrt(sum(v for v, _ in parts)), "parts": parts,
                "n": min(p["elbo"]["n"] for _, p in weighted),
                "between_alphas": [p["alpha"] for _, p in weighted], "flat": flat}

    for lo, hi in zip(points, points[1:], strict=False):
        k0, k1 = lo["kl_consistency"]["mean"], hi["kl_consistency"]["mean"]
        if k0 <= kl <= k1:
            t = 0.0 if k1 == k0 else (math.log(kl) - math.log(k0)) / (math.log(k1) - math.log(k0))
            return read([(1 - t, lo), (t, hi)], flat=False)
    if points and reach is not None and points[-1]["kl_consistency"]["mean"] <= kl <= reach:
        return read([(1.0, points[-1]), (0.0, points[-1])], flat=True)
    return None


def constrained_vs_front(records: list[dict]) -> list[dict]:
    """Each constrained (setting, epsilon): KL reached, the worst run's relative distance from
    epsilon, and the mean ELBO against the front at the same KL.

    ``within_10pct``: every run's KL is at most 10% above epsilon (below it is met, not missed).
    ``test``: Welch's t on ``elbo_minus_front`` (significance.welch), the constrained runs' sd^2 / n
    and the front's parts (``front_at``); its ``ci`` is the unadjusted 95% interval. ``position``:
    "above" or "below" the front where the Holm-adjusted p over all targets (the family: "the
    constrained mode lands on or above the front") is <= LEVEL, else "on" (no difference larger
    than ``detectable``, at LEVEL / m). None where either side has one seed or the KL is outside the
    front. The KL at which the front is read is the runs' mean, taken as known.
    """
    rows = []
    for dataset, setting in settings(records):
        points = front(records, dataset, setting)
        reach = largest_kl(records, dataset, setting)
        for eps in sorted({r["kl_target"] for r in group(records, dataset=dataset, setting=setting,
                                                           model="constrained")}):
            runs = group(records, dataset=dataset, setting=setting, model="constrained", kl_target=eps)
            kl, elbo = stats([r["kl_consistency"] for r in runs]), stats([r["elbo"] for r in runs])
            excess = [r["kl_consistency"] / eps - 1 for r in runs]
            row = {"dataset": dataset, "setting": setting, "kl_target": eps, "kl_consistency": kl,
                   "elbo": elbo, "alpha": stats([r.get("alpha", math.nan) for r in runs]),
                   "worst_excess": max(excess), "within_10pct": max(excess) <= TOLERANCE - 1,
                   "front": front_at(points, kl["mean"], reach), "elbo_minus_front": None,
                   "test": None, "p_holm": None, "detectable": None, "position": None}
            if row["front"] is not None:
                row["elbo_minus_front"] = elbo["mean"] - row["front"]["elbo"]
                # None with one seed on either side: no spread to test with (unknown, not "below")
                ours = (elbo["std"] ** 2 / elbo["n"], elbo["n"])
                row["test"] = significance.welch(row["elbo_minus_front"], [ours, *row["front"]["parts"]])
            rows.append(row)
    tested = [r for r in rows if r["test"] is not None]
    for r, p in zip(tested, significance.holm([r["test"]["p"] for r in tested]), strict=True):
        r["p_holm"] = p
        r["detectable"] = significance.detectable(r["test"]["se"], r["test"]["df"], LEVEL / len(tested))
        r["position"] = "on" if p > LEVEL else "above" if r["elbo_minus_front"] > 0 else "below"
    return rows


def paired_difference(records: list[dict], dataset: str, setting: str, key: str) -> dict:
    """alpha = 1 minus alpha = 0 of ``key``, per seed both have: ``diff``, the paired t-test
    (significance.paired: n, mean, std, se, df, p, the unadjusted 95% ``ci``), both sides'
    stats, and ``image_bound``, sqrt(mean over seeds of SE_0^2 + SE_1^2) from each run's ``KEY_se``
    (NaN without them): a bound on how far another set of test images could move the difference
    (the module's docstring: why it is not part of the test)."""
    fixed = fixed_runs(records, dataset, setting)
    side = {a: {r["seed"]: r for r in fixed if r["alpha_init"] == a and key in r} for a in (0.0, 1.0)}
    seeds = sorted(side[0.0].keys() & side[1.0].keys())
    variances = [side[0.0][s].get(f"{key}_se", math.nan) ** 2 + side[1.0][s].get(f"{key}_se", math.nan) ** 2
                 for s in seeds]
    ours, theirs = ([side[a][s][key] for s in seeds] for a in (1.0, 0.0))
    return {"diff": significance.paired(ours, theirs),
            "image_bound": math.sqrt(sum(variances) / len(seeds)) if seeds else math.nan,
            "vae": stats([r[key] for r in side[0.0].values()]),
            "consistency": stats([r[key] for r in side[1.0].values()])}


def direction(mean: float, p_holm: float, better: str) -> str:
    """"better" or "worse" for the consistency VAE where the Holm-adjusted p is <= LEVEL, else "no
    difference" (read: none larger than the comparison's detectable difference)."""
    if not p_holm <= LEVEL:  # NaN: untested
        return "no difference"
    return "better" if (mean > 0) == (better == "higher") else "worse"


def decide(family: list[dict]) -> None:
    """Holm over one family of comparisons (each with its paired ``diff`` and ``better``): sets each
    comparison's ``p_holm`` and ``direction``. The rule itself, apart from what claims reports."""
    for t, p in zip(family, significance.holm([t["diff"]["p"] for t in family]), strict=True):
        t["p_holm"], t["direction"] = p, direction(t["diff"]["mean"], p, t["better"])


def gap_claim(used: set[str]) -> str:
    """Claim 2 in the words of the estimates of log p(x) its comparisons used (``used``: keys)."""
    text = "the ELBO approaches the data log-likelihood"
    if "log_likelihood_gap" not in used:
        return f"{text} (IWAE - ELBO gap shrinks)"
    if "iwae_gap" not in used:
        return f"{text} (log p(x) - ELBO gap shrinks, log p(x) by quadrature)"
    return (f"{text} (its gap to log p(x) shrinks: log p(x) by quadrature where the runs have it, a "
            "2-D latent, else the IWAE bound; each comparison names its own)")


def estimate(records: list[dict], dataset: str, setting: str, keys: tuple[str, ...]) -> str:
    """The first of ``keys`` that every run of alpha 0 and 1 of the setting has: one estimate for
    all its seeds (log p(x) by quadrature exists at a 2-D latent only, and not in older runs)."""
    runs = [r for r in fixed_runs(records, dataset, setting) if r["alpha_init"] in (0.0, 1.0)]
    return next((k for k in keys if all(k in r for r in runs)), keys[-1])


# claim -> what it says (or a function of the keys used), and the (key, which way is better) that
# test it; a tuple of keys: the first that the setting's runs have (``estimate``): the ELBO's gap to
# log p(x) by quadrature, exact up to the grid, else to the IWAE bound, which is below log p(x)
CLAIMS = {
    "drift": ("the drift exists and the consistency loss removes it", [("kl_consistency", "lower")]),
    "elbo_to_loglik": (gap_claim, [(("log_likelihood_gap", "iwae_gap"), "lower")]),
    "inference": ("the encoder's inference is less suboptimal (amortisation gap shrinks)",
                  [("amortization_gap", "lower")]),
    "representation": ("better representations", [
        ("probe_accuracy", "higher"), ("knn_accuracy", "higher"), ("mutual_information", "higher"),
        ("active_units", "higher")]),
}
FOUND = ("better", "no difference", "worse")


def claims(records: list[dict]) -> dict[str, dict]:
    """Per claim: each (key, setting)'s paired difference, its Holm-adjusted p over the claim's
    comparisons with 2 or more seeds (``p_holm``), the difference detectable at LEVEL / m with 80%
    power (``detectable``: Holm finds it with at least that power), its direction, and one verdict:
    "holds" (better everywhere), "does not hold" (nowhere better), else "partly holds"; "not
    measured" without any pair of runs. A comparison of one seed has no test ("untested (1 seed)"),
    and the claim's verdict then ends in "(1 seed)"."""
    out = {}
    for name, (text, keys) in CLAIMS.items():
        tests = []
        for keys_of, better in keys:
            for dataset, setting in settings(records):
                key = keys_of if isinstance(keys_of, str) else estimate(records, dataset, setting, keys_of)
                d = paired_difference(records, dataset, setting, key)
                if d["diff"]["n"]:
                    beyond = (None if math.isnan(d["image_bound"])
                              else abs(d["diff"]["mean"]) > IMAGE_Z * d["image_bound"])
                    tests.append({"key": key, "dataset": dataset, "setting": setting, **d, "better": better,
                                  "beyond_image_bound": beyond, "p_holm": math.nan, "detectable": math.nan,
                                  "direction": "untested (1 seed)"})
        family = [t for t in tests if t["diff"]["n"] >= 2]
        decide(family)
        for t in family:
            t["detectable"] = significance.detectable(t["diff"]["se"], t["diff"]["df"], LEVEL / len(family))
        found = [t["direction"] for t in family]
        verdict = ("not measured" if not tests else "not tested" if not family
                   else "holds" if all(f == "better" for f in found)
                   else "does not hold" if "better" not in found else "partly holds")
        if len(family) < len(tests):
            verdict += " (1 seed)"
        claim = text({t["key"] for t in tests}) if callable(text) else text
        out[name] = {"claim": claim, "verdict": verdict, "tests": tests, "family_size": len(family),
                     "count": {f: found.count(f) for f in FOUND}}
    return out


def noise(records: list[dict], keys: tuple[str, ...] = ("kl_consistency", "elbo")) -> list[dict]:
    """Per setting and key: the median standard error over images of one run, against the spread
    over seeds at one alpha (the median over alphas of the std): which of the two dominates."""
    rows = []
    for dataset, setting in settings(records):
        for key in keys:
            fixed = fixed_runs(records, dataset, setting)
            ses = [r[f"{key}_se"] for r in fixed if f"{key}_se" in r]
            stds = [row[key]["std"] for row in by_alpha(records, dataset, setting, (key,))
                    if row[key]["n"] > 1]
            rows.append({"dataset": dataset, "setting": setting, "key": key,
                         "image_se": statistics.median(ses) if ses else math.nan,
                         "seed_std": statistics.median(stds) if stds else math.nan})
    return rows
