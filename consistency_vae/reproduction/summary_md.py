"""Render results/summary.json as results/summary.md: tables, mean ± std over seeds, and a verdict
written from the numbers themselves, so a regenerated summary can never claim what it didn't show."""

import math

from consistency_vae.evaluation.evaluate_args import QUADRATURE_POINTS
from consistency_vae.reproduction.common import LABELS, METRICS, NAMES, TOLERANCE
from consistency_vae.reproduction.significance import LEVEL, POWER

# a third digit tells runs apart: values below 1, and I(x; z), whose differences are 0.01 to 0.05 nats
THREE_DIGITS = ("kl_consistency", "probe_accuracy", "knn_accuracy", "mutual_information")
SETTING_NAMES = {"paper": "2-D latent (the paper's setting)", "d20": "20-D latent (higher capacity)"}


def cell(s: dict, digits: int = 2) -> str:
    if not s or s.get("n", 0) == 0 or math.isnan(s["mean"]):
        return "-"
    if s["n"] == 1 or math.isnan(s["std"]):
        return f"{s['mean']:.{digits}f} (n=1)"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def comparison_table(c: dict, paper: dict | None) -> list[str]:
    head = "| metric | plain VAE (alpha=0) | consistency (alpha=1) | constrained |"
    lines = [head, "| --- | --- | --- | --- |"]
    for m in METRICS:
        digits = 3 if m in THREE_DIGITS else 2
        row = [cell(c[model][m], digits) for model in ("vae", "consistency", "constrained")]
        if m == "alpha":
            row[:2] = ["0", "1"]
        elif set(row) == {"-"}:  # a metric no run of this setting has (log p(x) at 20-D, or older runs)
            continue
        lines.append(f"| {LABELS[m]} | " + " | ".join(row) + " |")
    if paper:
        lines.append(f"| *paper, test KL(z'\\|\\|z) after 25 epochs* | *{paper['vae']['kl_consistency']}* | "
                     f"*{paper['consistency']['kl_consistency']}* | |")
    return lines


def headline(name: str, c: dict, paper: dict | None) -> str:
    ratio, de, di = c["kl_ratio"], c["elbo_diff"], c["iwae_diff"]
    text = (f"**{name}**: the consistency loss divides test KL(z'||z) by **{cell(ratio)}** "
            f"(VAE over ours, per seed)")
    if paper:
        p = paper["vae"]["kl_consistency"] / paper["consistency"]["kl_consistency"]
        text += f"; the paper reports {p:.1f}x"
    text += (f". ELBO change (ours - VAE): **{cell(de)} nats**; IWAE change: **{cell(di)} nats**.")
    if paper and not math.isnan(ratio["mean"]) and ratio["mean"] < 3:
        text += " *That is less than the paper's ~3.9x reduction.*"
    if not math.isnan(de["mean"]) and de["mean"] < 0:
        text += f" *The ELBO gets worse by {-de['mean']:.2f} nats.*"
    return text


def title(dataset: str, setting: str) -> str:
    return f"{NAMES.get(dataset, dataset)} {'2-D' if setting == 'paper' else setting[1:] + '-D'}"


def partial_warning(seeds: dict) -> list[str]:
    """The run groups with fewer seeds than the sweep files ask (``expected``; summaries made
    without them: fewer than the most any group has), and those with no run yet (``missing``)."""
    out = []
    if seeds.get("missing"):
        out += [f"**Partial reproduction:** {len(seeds['missing'])} of the sweep files' "
                f"{seeds['planned']} run groups have no run yet: {', '.join(seeds['missing'])}. "
                "The verdicts leave them out.", ""]
    if not seeds["short"]:
        return out
    if "expected" in seeds:
        short = ", ".join(f"{k} ({n} of {seeds['expected'][k]})" for k, n in sorted(seeds["short"].items()))
        fewer = "fewer seeds than the sweep files ask"
    else:
        short = ", ".join(f"{k} ({n})" for k, n in sorted(seeds["short"].items()))
        fewer = f"fewer than {seeds['most']} seeds"
    return out + [f"**Partial reproduction:** {len(seeds['short'])} of {seeds['groups']} run groups have "
                  f"{fewer}: {short}. Their means and verdicts rest on fewer runs.", ""]


def p_value(p: float) -> str:
    return "-" if p is None or math.isnan(p) else "< 0.001" if p < 0.001 else f"{p:.3f}"


def signed(x: float, digits: int) -> str:
    return f"{x:+.{digits}f}"


def claims_section(claims: dict) -> list[str]:
    """One line per claim, its verdict and the test behind each comparison (alpha = 0 -> alpha = 1)."""
    out = ["## Verdict per claim", "",
           "The plain VAE (alpha = 0) against the paper's consistency VAE (alpha = 1), paired by seed: "
           "per setting and metric, a paired t-test over the seeds (`scipy.stats.ttest_rel`, n - 1 "
           "degrees of freedom). A claim's comparisons are one family, adjusted by Holm-Bonferroni: a "
           f"difference counts (*better* or *worse*) where its Holm-adjusted p is at most {LEVEL:g}, so a "
           f"claim declares a false difference with probability at most {LEVEL:.0%}. Intervals are 95% t "
           "intervals, not adjusted. *No difference* means none larger than the *detectable* difference, "
           f"the one the design finds with {POWER:.0%} power at {LEVEL:g} / m (m comparisons in the "
           "family; Holm finds it with at least that power). The tests hold the test images and their "
           "eval draw fixed, as every run shares them (see *How much is noise*); † marks a difference "
           "within 1.96 times its image bound, one that another set of test images might not reproduce.",
           ""]
    for c in claims.values():
        found = ", ".join(f"{n} {d}" for d, n in c["count"].items() if n)
        family = f"; Holm over {c['family_size']} comparisons" if c.get("family_size") else ""
        out.append(f"- **{c['claim']}**: **{c['verdict']}** ({found or 'no runs'}{family}).")
        for t in c["tests"]:
            digits = 3 if t["key"] in THREE_DIGITS else 2
            d = t["diff"]
            test = (f"difference {signed(d['mean'], digits)}" if d["n"] < 2 else
                    f"difference {signed(d['mean'], digits)} (95% CI {signed(d['ci'][0], digits)} to "
                    f"{signed(d['ci'][1], digits)}), Holm p {p_value(t['p_holm'])}")
            verdict = t["direction"]
            if verdict == "no difference":
                verdict += (" (the same in every seed)" if d["std"] == 0 and d["mean"] == 0
                            else f" (none beyond ±{t['detectable']:.{digits}f})")
            counted = t["direction"] in ("better", "worse")
            mark = " †" if counted and t.get("beyond_image_bound") is False else ""
            out.append(f"  - {title(t['dataset'], t['setting'])}, {LABELS.get(t['key'], t['key'])}: "
                       f"{cell(t['vae'], digits)} -> {cell(t['consistency'], digits)}, {test}: "
                       f"**{verdict}**{mark}")
    return out + [""]


def noise_section(rows: list[dict]) -> list[str]:
    """How large the image noise is against the spread over seeds, and why the tests hold it fixed."""
    out = ["## How much is noise", "",
           "KL(z'||z) and the ELBO are means over the 10k test images with one z per image. Their "
           "standard error over images (median over runs) says how far a run's test-set mean may lie "
           "from its mean over all such images; the std over seeds (median over alphas) is what "
           "training noise moves it by. Every run is evaluated on the same images with the same z draw "
           "per image, so that noise is one draw shared by all runs, not a fresh one per seed: the "
           "spread of the per-seed differences is training noise alone, and the verdicts' tests are "
           "conditional on this test set (as the paper's numbers are). How far other test images could "
           "move a difference is at most its image bound, sqrt(mean over seeds of SE_0^2 + SE_1^2) (two "
           "models' values on the same images correlate positively), which more seeds do not shrink; "
           "the verdicts mark (†) the differences within 1.96 times it.", "",
           "| setting | metric | SE over images, one run | std over seeds |", "| --- | --- | --- | --- |"]
    for r in rows:
        shown = ["-" if math.isnan(v) else f"{v:.4f}" for v in (r["image_se"], r["seed_std"])]
        out.append(f"| {title(r['dataset'], r['setting'])} | {LABELS.get(r['key'], r['key'])} | "
                   f"{shown[0]} | {shown[1]} |")
    return out + [""]


def constrained_section(rows: list[dict]) -> list[str]:
    m = sum(r["test"] is not None for r in rows)
    out = ["", "## Choosing alpha automatically: the constrained mode against the fixed-alpha front", "",
           "Constraint: test KL(z'||z) <= epsilon, met when every run ends at most "
           f"{TOLERANCE - 1:.0%} above epsilon. The front's ELBO is read at the constrained runs' mean "
           "KL, linear in log KL between the two fixed alphas around it (beyond the front's largest KL, "
           "flat at its last alpha: the alphas that drift more there have lower ELBOs; *flat beyond*). "
           "*Above*, *on* or *below* the front: Welch's t on the mean ELBO minus the front's, standard "
           "error sqrt(sd_c^2 / n_c + se_front^2), where se_front^2 sums each of the front's two alphas' "
           "sd^2 / n, weighted as the front is read, with Welch-Satterthwaite degrees of freedom. The "
           f"{m} targets are one family: above or below where the Holm-adjusted p is at most {LEVEL:g}, "
           f"else on (no difference beyond the detectable one, {POWER:.0%} power at {LEVEL:g} / {m}). "
           "Intervals are 95%, not adjusted. *Final alpha*: the multiplier when training ended (the "
           "evaluated checkpoint's).", "",
           "| setting | epsilon | KL | worst run vs epsilon | within 10%? | final alpha | ELBO "
           "| front at that KL (between alphas) | ELBO - front (95% CI) | Holm p | against the front |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        f, t = r["front"], r["test"]
        if f:
            lo, hi = f["between_alphas"]
            at = f"{f['elbo']:.2f} " + (f"({lo:g}, flat beyond)" if f["flat"] else f"({lo:g}, {hi:g})")
        else:
            at = "outside the front"
        diff = "-" if f is None else signed(r["elbo_minus_front"], 2) + (
            "" if t is None else f" ({signed(t['ci'][0], 2)} to {signed(t['ci'][1], 2)})")
        if r["position"] is None:
            verdict = "-" if f is None else "n/a: 1 seed, no spread"
        else:
            verdict = (f"on (none beyond ±{r['detectable']:.2f})" if r["position"] == "on"
                       else f"**{r['position']}**")
        out.append(f"| {title(r['dataset'], r['setting'])} | {r['kl_target']:g} "
                   f"| {cell(r['kl_consistency'], 3)} | {r['worst_excess']:+.1%} "
                   f"| {'yes' if r['within_10pct'] else '**no**'} "
                   f"| {cell(r['alpha'])} | {cell(r['elbo'])} | {at} | {diff} | {p_value(r['p_holm'])} "
                   f"| {verdict} |")
    return out


def recommendation_line(key: str, rec: dict) -> str:
    """One setting's answer to "which alpha?" (summary.recommend), as the README quotes it."""
    dataset, setting = key.split("/")
    head = f"- {title(dataset, setting)}: "
    if rec["alpha"] is None:
        return (head + f"no alpha meets the {rec['kl_budget']:g}-nat budget, so no recommendation (the "
                f"rule's pick, alpha = {rec['rule_pick']:g}, has test KL(z'||z) {rec['kl_consistency']:.3f}, "
                f"{rec['kl_consistency'] - rec['kl_budget']:.3f} nats over it).")
    below = ("" if math.isnan(rec["elbo_below_vae"])  # a setting without alpha = 0
             else f", {rec['elbo_below_vae']:.2f} nats below the plain VAE's")
    numbers = (f"**alpha = {rec['alpha']:g}** (test KL(z'||z) {rec['kl_consistency']:.3f}, ELBO "
               f"{rec['elbo']:.2f}{below})")
    if rec["meets_budget"]:
        return head + (f"{numbers}: the best ELBO of the {rec['within']} of {rec['candidates']} alphas "
                       f"within the {rec['kl_budget']:g}-nat budget.")
    return head + f"{numbers}: {rec['why']}."


def recommendation_section(recommendation: dict) -> list[str]:
    return ["", "**Which alpha** (the rule of [docs/method.md](../docs/method.md#which-alpha), which "
            "the sweeps rank their runs by: the best ELBO among the alphas whose KL(z'||z) is at most "
            "the budget, here on the test means over seeds):"] + [
        recommendation_line(key, rec) for key, rec in recommendation.items()]


def render(summary: dict) -> str:
    cfg = summary["config"]
    out = ["# Reproduction: Towards Consistent Variational Auto-Encoding", "",
           f"Generated by `make reproduce` (seeds={cfg['seeds']}, epochs={cfg['epochs']}, "
           f"learning rate {cfg.get('lr_schedule', 'constant')}, subset={cfg['subset']}, "
           f"IWAE K={cfg['iwae_k']} on the first {cfg['iwae_images'] or 'all'} "
           "test images). Mean ± std over seeds (sample std); every other metric on the full "
           "10k test set. Evaluated at the last epoch, as the paper reports."
           + (f" log p(x) by quadrature on a {n} x {n} grid (the default: {QUADRATURE_POINTS})."
              if (n := cfg.get("quadrature_points")) and n != QUADRATURE_POINTS else "")
           + (f" Tables and verdicts rebuilt from its run records by `consistency-vae reproduce "
              f"--from-summary {cfg['rebuilt_from']}`." if cfg.get("rebuilt_from") else ""), ""]
    seeds = summary["seeds_per_group"]  # where it knows each group's planned seeds, it says it all
    if "expected" not in seeds and cfg.get("planned_seeds") and cfg["seeds"] < cfg["planned_seeds"]:
        out += [f"**Partial reproduction:** {cfg['seeds']} of the sweep files' {cfg['planned_seeds']} seeds "
                "so far; a verdict marked (1 seed) has no spread over seeds yet.", ""]
    out += partial_warning(seeds)
    out += claims_section(summary["claims"]) + noise_section(summary["noise"]) + ["## Headline", ""]
    for d, by_setting in summary["results"].items():
        for s, c in by_setting.items():
            paper = summary["paper"].get(d) if s == "paper" else None
            out += [headline(f"{NAMES.get(d, d)}, {SETTING_NAMES.get(s, s)}", c, paper), ""]
    for d, by_setting in summary["results"].items():
        for s, c in by_setting.items():
            out += [f"## {NAMES.get(d, d)}: {SETTING_NAMES.get(s, s)}", ""]
            out += comparison_table(c, summary["paper"].get(d) if s == "paper" else None) + [""]

    out += ["## What alpha does (2-D latent)", "",
            "| dataset | alpha | runs | test KL(z'\\|\\|z) | test ELBO | IWAE | probe acc. |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary["sweep"]:
        cells = [cell({"mean": r[f"{m}_mean"], "std": r[f"{m}_std"], "n": r["n_runs"]}, 3 if m in
                      ("kl_consistency", "probe_accuracy") else 2)
                 for m in ("kl_consistency", "elbo", "iwae_ll", "probe_accuracy")]
        out.append(f"| {NAMES.get(r['dataset'], r['dataset'])} | {r['alpha']:g} | {r['n_runs']} | "
                   + " | ".join(cells) + " |")
    out += recommendation_section(summary["recommendation"])
    out += constrained_section(summary["constrained_vs_front"])
    early = [r for r in summary["runs"]
             if r.get("evaluated_epoch") is not None and r["evaluated_epoch"] < r["epochs"] - 1]
    if early:
        out += ["", "**Evaluated before the last epoch** (their last.ckpt was an earlier epoch; see the "
                "note in the README): " + ", ".join(f"{r['name']} (epoch {r['evaluated_epoch']})"
                                                   for r in early) + "."]
    out += ["", "Training seconds per epoch are the median epoch of each run, on a 2-core CPU "
            "shared with other jobs and with 2 runs at once, one thread each: a record of this "
            "reproduction, not a benchmark (`make bench` is).", ""]
    out += ["", "Figures: `kl_during_training.png` (Fig. 3a), `kl_after_training.png` (Fig. 3b), "
            "`latent_drift_mnist.png` and `latent_drift_fashion_mnist.png` (Fig. 2), `front.png` (the "
            "fixed-alpha front with the constrained runs), `gaps.png` and `representation.png` (against "
            "alpha), `alpha_tradeoff.png` (every metric against alpha, 2-D).", ""]
    return "\n".join(out)
