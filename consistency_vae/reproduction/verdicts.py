"""The questions the reproduction answers, from its run records (summary.record): pure functions.

- ``front``: the fixed-alpha front of one setting, mean ± std over seeds of test KL(z'||z) and the
  test ELBO of each alpha that no other alpha beats on both; ``front_at`` reads it at any KL
  inside its range.
- ``constrained_vs_front``: does each constrained epsilon end within 10% of epsilon, and does its
  mean ELBO lie on or above the front at the same KL, within one standard deviation?
- ``claims``: one verdict per claim of the paper (holds, partly holds, does not hold), each from the
  plain VAE (alpha = 0) against the paper's consistency VAE (alpha = 1), paired by seed.
- ``noise``: how much of a difference between two runs one z per image explains.

A difference "beyond the spread" is one whose mean over seeds exceeds the sample standard deviation
of the per-seed differences (n - 1) and twice the standard error over images of that mean (from
each run's ``KEY_se``). With one seed only the image noise is there, and the verdict says "1 seed".
"""

import math
import statistics

from consistency_vae.reproduction.common import TOLERANCE, group
from consistency_vae.sweep.report import mean_std


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
    """The front's ELBO (its std over seeds, and n: the fewer seeds of the two alphas) at test KL
    ``kl``, linear in log KL between the two alphas around it. Beyond the front's largest KL, up to
    ``reach`` (``largest_kl``: the largest mean KL of any fixed alpha), it is flat: every alpha there
    drifts more and has a lower ELBO than the front's last point (the plain VAE, when a small alpha
    beats it on both), so that point is the best a fixed alpha does at a KL of at most ``kl``
    (``flat``: True). None below the front's smallest KL or beyond ``reach`` (no extrapolation)."""
    for lo, hi in zip(points, points[1:], strict=False):
        k0, k1 = lo["kl_consistency"]["mean"], hi["kl_consistency"]["mean"]
        if k0 <= kl <= k1:
            t = 0.0 if k1 == k0 else (math.log(kl) - math.log(k0)) / (math.log(k1) - math.log(k0))
            std = [p["elbo"]["std"] for p in (lo, hi)]
            return {"elbo": (1 - t) * lo["elbo"]["mean"] + t * hi["elbo"]["mean"],
                    "std": (1 - t) * std[0] + t * std[1] if not any(map(math.isnan, std)) else math.nan,
                    "n": min(lo["elbo"]["n"], hi["elbo"]["n"]), "between_alphas": [lo["alpha"], hi["alpha"]],
                    "flat": False}
    if points and reach is not None and points[-1]["kl_consistency"]["mean"] <= kl <= reach:
        last = points[-1]
        return {"elbo": last["elbo"]["mean"], "std": last["elbo"]["std"], "n": last["elbo"]["n"],
                "between_alphas": [last["alpha"], last["alpha"]], "flat": True}
    return None


def constrained_vs_front(records: list[dict]) -> list[dict]:
    """Each constrained (setting, epsilon): KL reached, the worst run's relative distance from
    epsilon, and the mean ELBO against the front at the same KL.

    ``within_10pct``: every run's KL is at most 10% above epsilon (below it is met, not missed).
    ``on_or_above_front``: mean ELBO >= front ELBO - sigma, sigma = sqrt(std_c^2 + std_front^2),
    the spread over seeds of the difference of two independent means of seeds; None where either
    side has one seed (no spread) or the KL is outside the front.
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
                   "sigma": None, "on_or_above_front": None}
            if row["front"] is not None:
                row["elbo_minus_front"] = elbo["mean"] - row["front"]["elbo"]
                # NaN with one seed on either side: no spread to judge within (None, not "no")
                row["sigma"] = math.hypot(elbo["std"], row["front"]["std"])
                if not math.isnan(row["sigma"]):
                    row["on_or_above_front"] = row["elbo_minus_front"] >= -row["sigma"]
            rows.append(row)
    return rows


def paired_difference(records: list[dict], dataset: str, setting: str, key: str) -> dict:
    """alpha = 1 minus alpha = 0 of ``key``, per seed both have: stats, both sides' stats, and the
    image noise of the mean difference, sqrt(mean over seeds of se_0^2 + se_1^2) / sqrt(n), from
    each run's ``KEY_se`` (NaN without them). It treats the two runs' test-set means as independent,
    although they share the test images: an upper bound on the noise of their difference."""
    fixed = fixed_runs(records, dataset, setting)
    side = {a: {r["seed"]: r for r in fixed if r["alpha_init"] == a and key in r} for a in (0.0, 1.0)}
    seeds = sorted(side[0.0].keys() & side[1.0].keys())
    variances = [side[0.0][s].get(f"{key}_se", math.nan) ** 2 + side[1.0][s].get(f"{key}_se", math.nan) ** 2
                 for s in seeds]
    image_se = math.sqrt(sum(variances) / len(seeds) / len(seeds)) if seeds else math.nan
    return {"diff": stats([side[1.0][s][key] - side[0.0][s][key] for s in seeds]), "image_se": image_se,
            "vae": stats([r[key] for r in side[0.0].values()]),
            "consistency": stats([r[key] for r in side[1.0].values()])}


def direction(diff: dict, better: str, image_se: float = math.nan) -> str:
    """"better", "worse" or "no difference" for the consistency VAE: a mean difference counts when
    it exceeds the std of the per-seed differences (n > 1) and twice its image noise (if known)."""
    mean, std, n = diff["mean"], diff["std"], diff["n"]
    if n == 0 or mean == 0:
        return "no difference"
    if (n > 1 and abs(mean) <= std) or abs(mean) <= 2 * image_se:  # NaN: no image noise known
        return "no difference"
    return "better" if (mean > 0) == (better == "higher") else "worse"


# claim -> what it says, and the (key, which way is better) that test it
CLAIMS = {
    "drift": ("the drift exists and the consistency loss removes it", [("kl_consistency", "lower")]),
    "elbo_to_loglik": ("the ELBO approaches the data log-likelihood (IWAE - ELBO gap shrinks)",
                       [("iwae_gap", "lower")]),
    "inference": ("the encoder's inference is less suboptimal (amortisation gap shrinks)",
                  [("amortization_gap", "lower")]),
    "representation": ("better representations", [
        ("probe_accuracy", "higher"), ("knn_accuracy", "higher"), ("mutual_information", "higher"),
        ("active_units", "higher")]),
}


def claims(records: list[dict]) -> dict[str, dict]:
    """Per claim: each (key, setting)'s paired difference and direction, and one verdict:
    "holds" (better beyond the spread everywhere), "does not hold" (nowhere better), else
    "partly holds"; "not measured" without any pair of runs. "(1 seed)" where n = 1."""
    out = {}
    for name, (text, keys) in CLAIMS.items():
        tests = []
        for key, better in keys:
            for dataset, setting in settings(records):
                d = paired_difference(records, dataset, setting, key)
                if d["diff"]["n"]:
                    tests.append({"key": key, "dataset": dataset, "setting": setting, **d,
                                  "better": better, "direction": direction(d["diff"], better, d["image_se"])})
        found = [t["direction"] for t in tests]
        verdict = ("not measured" if not found else "holds" if all(f == "better" for f in found)
                   else "does not hold" if "better" not in found else "partly holds")
        if tests and min(t["diff"]["n"] for t in tests) < 2:
            verdict += " (1 seed)"
        out[name] = {"claim": text, "verdict": verdict, "tests": tests,
                     "count": {f: found.count(f) for f in ("better", "no difference", "worse")}}
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
