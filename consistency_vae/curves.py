"""The training curves of a run: every logged quantity per epoch, for train, val and test.

``TrainingCurves`` draws them at the end of training from the run's metrics record
(``run_record.merged_rows``, so a resumed run shows all its epochs), and sends the figure where
the other figures go (``callbacks.log_figure``: W&B, TensorBoard, ``figures/`` in the run folder).
It knows no metric names: each ``stage/name`` key is one panel (the loss terms, KL(z'||z),
``val/selection``...), with a line per stage. Train values are the epoch means (``*_epoch``);
a key logged only per step shows its last value of each epoch. ``alpha`` gets a panel only when
it moved (the constrained mode), where a line marks ``kl_target`` on the KL(z'||z) panel.
``val/selection`` is not drawn (``HIDDEN``). Epochs are counted from 1 on the axis, in the title
and in the file name.
"""

import math

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from consistency_vae import run_record, run_start, ticks
from consistency_vae.callbacks import epochs_done, log_figure, setting_words

STAGES = ("train", "val", "test")
FIRST = ("loss", "recon", "kl", "elbo", "kl_consistency", "alpha")  # panel order; others follow, sorted
LOG_SCALE = ("kl_consistency",)  # spans orders of magnitude between alpha = 0 and alpha > 0
# Not drawn: val/selection is the checkpoint's ranking (constraint.selection_criterion): val/loss
# at a fixed alpha, and -ELBO, or 1e6 plus a penalty for an epoch over kl_target, in constrained
# mode; its panel would repeat the loss or run to 1e6. The loss and elbo panels show what it ranks.
HIDDEN = ("selection",)
LABELS = {"kl_consistency": "kl_consistency: KL(z'||z)", "kl": "kl: KL(q(z|x) || p(z))",
          "recon": "recon: -log p(x|z)", "alpha": "alpha: the weight of KL(z'||z)",
          "constraint": "constraint: moving average of train KL(z'||z)"}
NATS = "nats per image"  # every loss term: summed over pixels and latent dims, mean over images
UNITS = {"loss": NATS, "recon": NATS, "kl": NATS, "elbo": NATS, "kl_consistency": NATS,
         "alpha": "no unit (nats per nat)", "constraint": NATS, "constrained_elbo": NATS}
TARGETED = ("kl_consistency", "constraint")  # constrained mode: the panels kl_target bounds
STYLE = {"train": ("tab:blue", "-"), "val": ("tab:orange", "--"), "test": ("tab:green", ":")}

Curves = dict[str, dict[str, dict[int, float]]]  # name -> stage -> epoch -> value


def epoch_curves(rows: list[dict[str, str]]) -> Curves:
    """Metrics-record rows (CSVLogger's: ``epoch``, ``step``, ``stage/name`` columns) -> curves."""
    keys = set().union(*rows) if rows else set()
    curves: Curves = {}
    for row in rows:
        if "epoch" not in row or run_record.is_final_test(row):  # not an epoch's point
            continue
        epoch = int(float(row["epoch"]))
        for key, value in row.items():
            stage, _, name = key.partition("/")
            if stage not in STAGES or not name or name.endswith("_step"):
                continue
            if name.endswith("_epoch"):
                name = name[: -len("_epoch")]
            elif f"{key}_epoch" in keys:  # the per-step value of a term that has an epoch mean
                continue
            curves.setdefault(name, {}).setdefault(stage, {})[epoch] = float(value)
    alpha = {v for points in curves.get("alpha", {}).values() for v in points.values()}
    if len(alpha) <= 1:  # a fixed alpha: a flat line says nothing
        curves.pop("alpha", None)
    return curves


def curves_figure(curves: Curves, title: str = "", kl_target: float | None = None) -> Figure:
    """One panel per quantity, epochs 1..N on x (the value after that epoch), a line per stage.

    kl_target (constrained mode): a line at the constraint's epsilon on the KL(z'||z) panels.
    A key of unknown unit gets no y label (UNITS lists the known ones)."""
    names = [n for n in FIRST if n in curves] + sorted(n for n in curves
                                                        if n not in FIRST and n not in HIDDEN)
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows + 0.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        for stage in STAGES:
            points = curves[name].get(stage)
            if points:
                epochs = sorted(points)
                colour, line = STYLE[stage]
                ax.plot([e + 1 for e in epochs], [points[e] for e in epochs], line, color=colour,
                        marker="o", markersize=3, label=stage)
        if name in TARGETED and kl_target is not None:
            ax.axhline(kl_target, color="k", lw=1, ls="-.", label=f"kl_target {kl_target:g}")
        positive = all(v > 0 for points in curves[name].values() for v in points.values())
        if name in LOG_SCALE and positive:
            ax.set_yscale("log")
            ticks.plain_log_ticks(ax, "y")
        ax.set(title=LABELS.get(name, name), xlabel="epoch", ylabel=UNITS.get(name, ""))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(names):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return fig


def curves_title(dataset: str, hparams, alpha: float, epochs: int, max_epochs: int | None) -> str:
    """``mnist, alpha=1: training curves, epochs 1 to 25 of 25``; in constrained mode the
    kl_target and the final alpha (``callbacks.setting_words``)."""
    of = f" of {max_epochs}" if max_epochs and max_epochs > 0 else ""
    return (f"{dataset}, {setting_words(hparams, alpha)}: training curves, "
            f"epochs 1 to {epochs}{of}").lstrip(", ")


class TrainingCurves(Callback):
    """At the end of training: ``figures/training_curves_epochNN.png`` (NN: epochs trained, counted
    from 1) and the same figure in W&B."""

    name = "training_curves"

    @rank_zero_only
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.draw(trainer, pl_module, epochs_done(trainer))

    def draw(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        """The figure of the run folder's epoch rows so far; epoch: the epochs trained, counted
        from 1 (the training hook calls it; so does a pack for each member at its end)."""
        folder = run_start.run_folder(trainer)
        if folder is None:
            if not trainer.fast_dev_run:  # fast_dev_run replaces the loggers: nothing to read
                rank_zero_warn("TrainingCurves reads the CSVLogger's metrics: make it the first "
                               "trainer.logger, or drop TrainingCurves from trainer.callbacks")
            return
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                logger.save()  # the last epoch's rows may still be buffered
        curves = epoch_curves(run_record.merged_rows(folder))
        if not curves:
            return
        dataset = getattr(trainer.datamodule, "hparams", {}).get("dataset", "")
        hparams = pl_module.hparams
        title = curves_title(dataset, hparams, float(pl_module.alpha), epoch, trainer.max_epochs)
        kl_target = hparams.get("kl_target") if hparams.get("alpha_mode") == "constrained" else None
        fig = curves_figure(curves, title, kl_target)
        log_figure(trainer, self.name, fig, epoch)
        fig.clf()  # frees the artists now; Figure objects are never registered with pyplot
