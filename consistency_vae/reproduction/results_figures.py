"""The reproduction's figures of the paper: its Fig. 3a, 3b and 2, and the alpha trade-off (the
front, the gaps and the representations against alpha: claims_figures.py)."""

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from consistency_vae import ticks
from consistency_vae.reproduction.common import NAMES, group
from consistency_vae.sweep.report import tradeoff_figure

COLOURS = {"vae": "tab:blue", "consistency": "tab:red", "constrained": "tab:green"}
LEGEND = {"vae": "plain VAE (alpha=0)", "consistency": "consistency (alpha=1)",
          "constrained": "constrained (KL <= eps)"}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def kl_during_training(records: list[dict], datasets: list[str]) -> Figure:
    """Fig. 3a: test KL(z'||z) after each epoch, mean over seeds with a min-max band."""
    fig = _figure(5.5 * len(datasets), 4)
    for ax, d in zip(fig.subplots(1, len(datasets), squeeze=False)[0], datasets, strict=True):
        for model in ("vae", "consistency"):
            runs = group(records, dataset=d, setting="paper", model=model)
            curves = [r["curve"] for r in runs if r["curve"]]
            if not curves:
                continue
            c = np.array(curves)  # (seeds, epochs); NaN where a resumed run lost an epoch's log
            epochs = np.arange(1, c.shape[1] + 1)
            ax.plot(epochs, np.nanmean(c, 0), color=COLOURS[model], label=f"{LEGEND[model]}, {len(c)} seeds")
            ax.fill_between(epochs, np.nanmin(c, 0), np.nanmax(c, 0), color=COLOURS[model], alpha=0.2)
        ax.set(title=f"{NAMES.get(d, d)}: test KL(z'||z) during training", xlabel="epoch",
               ylabel="KL(q(z'|x') || q(z|x)) [nats]", yscale="log")
        ticks.plain_log_ticks(ax, "y")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    return fig


def kl_after_training(summary: dict, datasets: list[str]) -> Figure:
    """Fig. 3b: test KL(z'||z) at the end, ours beside the paper's (MNIST only has paper values)."""
    fig = _figure(4.5 * len(datasets), 4)
    for ax, d in zip(fig.subplots(1, len(datasets), squeeze=False)[0], datasets, strict=True):
        c = summary["results"][d]["paper"]
        models = ("vae", "consistency")
        means = [c[m]["kl_consistency"]["mean"] for m in models]
        stds = [0 if math.isnan(c[m]["kl_consistency"]["std"]) else c[m]["kl_consistency"]["std"]
                for m in models]
        x = np.arange(len(models))
        ax.bar(x - 0.2, means, 0.4, yerr=stds, capsize=4, color=[COLOURS[m] for m in models],
               label="this project (mean ± std)")
        paper = summary["paper"].get(d)
        if paper:
            ax.bar(x + 0.2, [paper[m]["kl_consistency"] for m in models], 0.4, color="none",
                   edgecolor="k", hatch="//", label="paper")
        for xi, m, s in zip(x, means, stds, strict=True):  # above the error bar, not on it
            ax.annotate(f"{m:.2f}", (xi - 0.2, m + s), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=9)
        ax.set_xticks(x, ["plain VAE", "consistency"])
        ax.set(title=f"{NAMES.get(d, d)}: test KL(z'||z) after training", ylabel="nats")
        ax.legend(fontsize=8)
    return fig


def stack_pngs(paths: list[Path], titles: list[str]) -> Figure:
    """Several saved figures (evaluate's latent_drift.png) one above the other, with a title each."""
    import matplotlib.image as mpimg

    images = [mpimg.imread(p) for p in paths]
    h = sum(im.shape[0] for im in images) / 100
    fig = _figure(images[0].shape[1] / 100, h + 0.4 * len(images))
    for ax, im, title in zip(fig.subplots(len(images), 1, squeeze=False)[:, 0], images, titles, strict=True):
        ax.imshow(im)
        ax.set_title(title, fontsize=12, loc="left")
        ax.axis("off")
    return fig


def write_all(summary: dict, records: list[dict], output: Path) -> None:
    datasets = list(summary["results"])
    kl_during_training(records, datasets).savefig(output / "kl_during_training.png")
    kl_after_training(summary, datasets).savefig(output / "kl_after_training.png")
    for d in datasets:
        by_model = {r["model"]: r for r in group(records, dataset=d, setting="paper", seed=0)}
        pngs = [Path(by_model[m]["folder"]) / "eval/latent_drift.png"
                for m in ("vae", "consistency") if m in by_model]
        if len(pngs) == 2 and all(p.is_file() for p in pngs):
            stack_pngs(pngs, [f"Plain VAE (alpha = 0), {NAMES.get(d, d)}",
                              f"Consistency VAE (alpha = 1), {NAMES.get(d, d)}"]
                       ).savefig(output / f"latent_drift_{d}.png", dpi=72)  # ~300 KB, for git
    if summary["sweep"]:
        epochs = [r["epochs"] for r in records  # the runs summary["sweep"] holds (summary.py)
                  if r.get("epochs") and r["setting"] == "paper" and r["kl_target"] is None]
        tradeoff_figure(summary["sweep"], epochs).savefig(output / "alpha_tradeoff.png", dpi=110)
