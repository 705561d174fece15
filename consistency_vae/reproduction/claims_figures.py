"""The figures of issue 13's questions: the fixed-alpha front with the constrained runs, and the
gaps and representation metrics against alpha; one panel per setting (dataset x latent size),
mean ± std over seeds. Pure matplotlib on the summary's records (no pyplot state)."""

import math

from matplotlib.figure import Figure

from consistency_vae import ticks
from consistency_vae.reproduction.common import LABELS, NAMES, TOLERANCE, group
from consistency_vae.reproduction.results_figures import _figure
from consistency_vae.reproduction.verdicts import by_alpha, estimate, front, largest_kl, settings, stats

SETTING_TITLES = {"paper": "2-D"}


def _title(dataset: str, setting: str) -> str:
    return f"{NAMES.get(dataset, dataset)}, {SETTING_TITLES.get(setting, setting.replace('d', '') + '-D')}"


def _std(s: dict) -> float:
    return 0.0 if math.isnan(s["std"]) else s["std"]


def _panels(n: int, width: float = 4.6, height: float = 3.8, cols: int = 4):
    cols = min(cols, max(1, n))
    rows = math.ceil(max(1, n) / cols)
    fig = _figure(width * cols, height * rows)
    return fig, list(fig.subplots(rows, cols, squeeze=False).flat)


def front_figure(records: list[dict], paper: dict) -> Figure:
    """Test ELBO against test KL(z'||z): the fixed-alpha front (mean ± std over seeds, labelled by
    alpha), each constrained epsilon's mean ± std, and the paper's two KL values on MNIST 2-D."""
    pairs = settings(records)
    fig, axes = _panels(len(pairs))
    for ax, (d, s) in zip(axes, pairs, strict=False):
        points = [p for p in by_alpha(records, d, s, ("kl_consistency", "elbo")) if p["elbo"]["n"]]
        ax.errorbar([p["kl_consistency"]["mean"] for p in points], [p["elbo"]["mean"] for p in points],
                    xerr=[_std(p["kl_consistency"]) for p in points],
                    yerr=[_std(p["elbo"]) for p in points], color="tab:blue", marker="o", ms=4,
                    capsize=3, ls="none", label="fixed alpha (mean ± std over seeds)")
        envelope = front(records, d, s)
        kls = [p["kl_consistency"]["mean"] for p in envelope]
        reach = largest_kl(records, d, s)
        if kls and kls[-1] < reach:  # flat to the largest KL: the alphas there have lower ELBOs (front_at)
            envelope, kls = [*envelope, envelope[-1]], [*kls, reach]
        ax.plot(kls, [p["elbo"]["mean"] for p in envelope], color="tab:blue", lw=1,
                label="the front (no alpha better on both)")
        for p in points:
            ax.annotate(f"{p['alpha']:g}", (p["kl_consistency"]["mean"], p["elbo"]["mean"]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
        for i, eps in enumerate(sorted({r["kl_target"] for r in group(records, dataset=d, setting=s,
                                                                        model="constrained")})):
            runs = group(records, dataset=d, setting=s, model="constrained", kl_target=eps)
            kl, elbo = stats([r["kl_consistency"] for r in runs]), stats([r["elbo"] for r in runs])
            colour = ("tab:green", "tab:olive", "tab:cyan")[i % 3]
            ax.errorbar([kl["mean"]], [elbo["mean"]], xerr=[_std(kl)], yerr=[_std(elbo)], marker="*",
                        ms=13, color=colour,
                        mec="k", capsize=3, ls="none", label=f"constrained, eps={eps:g} ({len(runs)} seeds)")
            ax.axvline(eps * TOLERANCE, color=colour, ls=":", lw=1)
        if d in paper and s == "paper":
            for model, ls in (("vae", "--"), ("consistency", "-.")):
                ax.axvline(paper[d][model]["kl_consistency"], color="0.3", ls=ls, lw=1,
                           label=f"paper, {'VAE' if model == 'vae' else 'alpha=1'}: KL "
                                 f"{paper[d][model]['kl_consistency']}")
        hidden = _zoom_to_targets(ax, points, group(records, dataset=d, setting=s, model="constrained"))
        ax.set(xscale="log", xlabel="test KL(z'||z) [nats]", ylabel="test ELBO [nats]",
               title=_title(d, s) + (f" (off the panel: alpha {', '.join(hidden)})" if hidden else ""))
        ticks.plain_log_ticks(ax, "x")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    for ax in axes[len(pairs):]:
        ax.axis("off")
    return fig


def _zoom_to_targets(ax, points: list[dict], constrained: list[dict]) -> list[str]:
    """ELBO limits around the constrained runs and the alphas whose KL is at least half the smallest
    epsilon (a collapsed alpha = 30 at KL 0.07 would squash the rest); the alphas left out."""
    if not constrained:
        return []
    low_kl = 0.5 * min(r["kl_target"] for r in constrained)
    shown = [p for p in points if p["kl_consistency"]["mean"] >= low_kl]
    elbos = [r["elbo"] for r in constrained] + [p["elbo"]["mean"] - _std(p["elbo"]) for p in shown]
    top = max(elbos + [p["elbo"]["mean"] + _std(p["elbo"]) for p in shown])
    bottom = min(elbos)
    margin = 0.08 * (top - bottom) + 0.05
    ax.set_ylim(bottom - margin, top + margin)
    ax.set_xlim(left=0.8 * min([low_kl] + [p["kl_consistency"]["mean"] for p in shown]))
    return [f"{p['alpha']:g}" for p in points if p["elbo"]["mean"] < bottom - margin]


def against_alpha(records: list[dict], keys: tuple, title: str) -> Figure:
    """One row per key, one column per setting: mean ± std over seeds against alpha (symlog x, so
    that alpha = 0, the plain VAE, is on the axis). A key may be a tuple of alternatives: each
    setting plots the first that its runs have (verdicts.estimate, as the claims choose), and
    every panel of that row names its own."""
    pairs = settings(records)
    fig = _figure(4.2 * max(1, len(pairs)), 3.0 * len(keys))
    grid = fig.subplots(len(keys), max(1, len(pairs)), squeeze=False)
    for col, (d, s) in enumerate(pairs):
        chosen = [estimate(records, d, s, k) if isinstance(k, tuple) else k for k in keys]
        rows = by_alpha(records, d, s, chosen)
        for row, key in enumerate(chosen):
            ax = grid[row][col]
            pts = [r for r in rows if r[key]["n"]]
            ax.errorbar([r["alpha"] for r in pts], [r[key]["mean"] for r in pts],
                        yerr=[_std(r[key]) for r in pts], marker="o", ms=4, capsize=3)
            ticks.alpha_axis(ax, [r["alpha"] for r in rows])
            ax.tick_params(axis="x", labelsize=8)
            ax.minorticks_off()
            ax.set(xlabel="alpha" if row == len(keys) - 1 else None,
                   ylabel=LABELS.get(key, key) if col == 0 or isinstance(keys[row], tuple) else None,
                   title=_title(d, s) if row == 0 else None)
            ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


GAPS = (("log_likelihood_gap", "iwae_gap"), "amortization_gap", "approximation_gap")  # as claim 2
REPRESENTATION = ("probe_accuracy", "knn_accuracy", "mutual_information", "active_units")


def write_all(records: list[dict], paper: dict, output) -> None:
    if any(r["kl_target"] is None for r in records):
        front_figure(records, paper).savefig(output / "front.png")
        against_alpha(records, GAPS, "Where the ELBO loses to log p(x), against alpha (mean ± std over "
                      "seeds)").savefig(output / "gaps.png")
        against_alpha(records, REPRESENTATION, "Representation quality of mu(x) against alpha (mean ± "
                      "std over seeds)").savefig(output / "representation.png")
