"""Figures a paper would print (issue 21, section 4): epochs counted from 1 wherever a reader
sees them, units on the curves' y axes, plain log tick labels, kl_target marked and val/selection
left out, tick labels at every alpha of a sweep with no marker cut by the axes, and one scale in
every zoomed panel of Fig. 2, whose views the overview marks with boxes."""

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning import Trainer
from lightning.pytorch.loggers import CSVLogger
from matplotlib.patches import Rectangle

from consistency_vae import callbacks, curves, figures, ticks
from consistency_vae.datamodule import MNISTDataModule
from consistency_vae.model import ConsistencyVAE
from consistency_vae.sweep.report import (
    METRICS,
    epochs_trained,
    find_runs,
    report,
    summarise,
    tradeoff_figure,
)
from tests.test_sweep_report import make_run

PLAIN = re.compile(r"^(−|-)?\d+(\.\d+)?(e[+-]\d+)?$")  # 0.5, 12, 1e+04; not 5x10^-1 math text


def tick_texts(ax, which: str = "y") -> list[str]:
    ax.figure.canvas.draw()
    axis = ax.yaxis if which == "y" else ax.xaxis
    lo, hi = sorted(ax.get_ylim() if which == "y" else ax.get_xlim())
    return [t.get_text() for t in axis.get_ticklabels(which="both")
            if t.get_text() and lo <= (t.get_position()[1] if which == "y" else t.get_position()[0]) <= hi]


# --- a real constrained fit: what its figures say about epochs, kl_target, val/selection --------
@pytest.fixture(scope="module")
def constrained_fit(tmp_path_factory, data_dir):
    """Three tiny epochs of a constrained run (kl_target 1.3), the drift figure every 2 epochs and
    at the end, the training curves; every figure the callbacks log is recorded."""
    root = tmp_path_factory.mktemp("fit")
    logged = []

    def record(trainer, name, fig, epoch):  # a snapshot: the callbacks clear the figure after
        lines = [[(ln.get_label(), list(ln.get_xdata()), list(ln.get_ydata())) for ln in a.get_lines()]
                 for a in fig.axes]
        logged.append(SimpleNamespace(name=name, epoch=epoch, title=fig._suptitle.get_text(), axes=[
            (a.get_title(), a.get_ylabel(), a_lines) for a, a_lines in zip(fig.axes, lines, strict=True)]))
        return original(trainer, name, fig, epoch)

    original = callbacks.log_figure
    torch.manual_seed(0)
    model = ConsistencyVAE(latent_dim=2, alpha_mode="constrained", kl_target=1.3)
    dm = MNISTDataModule(data_dir=str(data_dir), subset=300, batch_size=50)
    trainer = Trainer(max_epochs=3, limit_train_batches=3, limit_val_batches=1, accelerator="cpu",
                      logger=CSVLogger(root / "runs", name="tiny"), enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                      callbacks=[callbacks.TestSetConsistency(), callbacks.LatentScatter(every_n_epochs=2),
                                 curves.TrainingCurves()])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(callbacks, "log_figure", record)
            mp.setattr(curves, "log_figure", record)
            trainer.fit(model, datamodule=dm)
    finally:
        torch.set_num_threads(threads)
    return SimpleNamespace(logged=logged, folder=Path(trainer.log_dir))


def test_epochs_count_from_one_in_file_names_titles_and_axes(constrained_fit):
    names = sorted(p.name for p in (constrained_fit.folder / "figures").iterdir())
    assert names == ["latent_drift_epoch02.png", "latent_drift_epoch03.png",
                     "training_curves_epoch03.png"]  # after epochs 2 and 3 of 3: never epoch00
    by_file = {f"{f.name}_epoch{f.epoch:02d}.png": f for f in constrained_fit.logged}
    assert "epoch 2 of 3" in by_file["latent_drift_epoch02.png"].title
    assert "epoch 3 of 3" in by_file["latent_drift_epoch03.png"].title
    assert "constrained, kl_target = 1.3" in by_file["latent_drift_epoch03.png"].title  # not alpha alone
    curve = by_file["training_curves_epoch03.png"]
    assert "epochs 1 to 3 of 3" in curve.title and "kl_target = 1.3" in curve.title
    drawn = [x for _, _, lines in curve.axes for label, x, _ in lines if label in ("train", "val", "test")]
    assert drawn and all(x == [1, 2, 3] for x in drawn)  # the value after epoch 1, 2, 3


def test_curves_have_units_kl_target_and_no_selection_panel(constrained_fit):
    (curve,) = [f for f in constrained_fit.logged if f.name == "training_curves"]
    panels = {title.split(":")[0]: (ylabel, lines) for title, ylabel, lines in curve.axes if title}
    assert "selection" not in panels  # 1e6 for an infeasible epoch: it would flatten nothing else
    for name in ("loss", "recon", "kl", "elbo", "kl_consistency", "constraint"):
        assert panels[name][0] == "nats per image", name
    assert panels["alpha"][0].startswith("no unit")
    for name in ("kl_consistency", "constraint"):  # the constraint's epsilon, on both KL panels
        targets = [y for label, _, y in panels[name][1] if "kl_target" in label]
        assert targets == [[1.3, 1.3]]


def test_curves_figure_hides_selection_even_when_it_runs_to_1e6():
    data = {"loss": {"val": {0: 300.0, 1: 250.0}}, "selection": {"val": {0: 1.0e6, 1: -200.0}},
            "kl_consistency": {"train": {0: 1.9, 1: 0.6}, "val": {0: 1.7, 1: 0.9}}}
    fig = curves.curves_figure(data, kl_target=1.3)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert not any(t.startswith("selection") for t in titles) and len(titles) == 2
    fixed = curves.curves_figure(data)  # a fixed alpha: no kl_target line
    assert not [ln for ax in fixed.axes for ln in ax.get_lines() if "kl_target" in ln.get_label()]


@pytest.mark.parametrize(("lo", "hi"), [(0.7, 1.9), (0.6, 3.0), (0.05, 12.0), (1.1, 1.4), (3.0, 30000.0)])
def test_log_axes_are_labelled_in_plain_numbers(lo, hi):
    """A narrow span once drew 6x10^-1-style labels; every span gets plain labels on both halves."""
    fig = curves.curves_figure({"kl_consistency": {"val": {0: hi, 1: lo, 2: (lo * hi) ** 0.5}}})
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    labels = tick_texts(ax)
    assert len(labels) >= 2 and all(PLAIN.match(t) for t in labels), labels
    # labels in both halves of the axis: 0.6 to 1.9 once had its only labels at 0.7 to 1
    values = np.log10([float(t.replace("−", "-")) for t in labels])
    middle = np.log10(ax.get_ylim()).mean()
    assert values.min() < middle < values.max(), labels


# --- the sweep report: a label at each alpha, no marker cut, the epochs said --------------------
ALPHAS = [0.0, 0.1, 0.3, 1.0, 3.0]


def rows_for(alphas) -> list[dict]:
    return [{"dataset": "mnist", "alpha": a, "n_runs": 2, "seeds": "0 1",
             **{f"{m}_{s}": (math.nan if m not in ("kl_consistency", "elbo") else
                             (1.0 / (1 + a) if s == "mean" else 0.1))
                for m, _, _ in METRICS for s in ("mean", "std")}}
            for a in alphas]


def test_tradeoff_labels_every_alpha_and_cuts_no_marker():
    fig = tradeoff_figure(rows_for(ALPHAS), epochs=[3, 3])
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    assert len(panels) == 2  # KL and ELBO; the IWAE column is empty and not drawn
    for ax in panels:
        assert tick_texts(ax, "x") == ["0", "0.1", "0.3", "1", "3"]  # 0.3 and 3 labelled
        lo, hi = ax.get_xlim()
        assert lo < 0 < 3.0 < hi  # the end alphas lie inside the axes ...
        ends = ax.transData.transform([(0.0, 0.5), (3.0, 0.5)])[:, 0]
        left, right = ax.transAxes.transform([(0, 0), (1, 0)])[:, 0]
        marker = 3.0 * fig.dpi / 72  # ... by more than a marker's radius (6 pt across)
        assert ends[0] - left > marker and right - ends[1] > marker
    kl_title = panels[0].get_title()
    assert kl_title.count("lower") == 1  # "(lower: more consistent)" said once, not twice
    assert "3 epochs" in fig._suptitle.get_text() and "2 seeds" in fig._suptitle.get_text()
    title = fig._suptitle.get_window_extent(fig.canvas.get_renderer())
    assert 0 <= title.x0 and title.x1 <= fig.bbox.x1  # two panels wide, and the title still fits


def test_a_bayes_sweeps_many_alphas_get_round_labels():
    alphas = [0.0137, 0.05, 0.21, 0.77, 1.9, 4.4, 8.0, 12.5, 27.0]
    fig = tradeoff_figure(rows_for(alphas))
    assert tick_texts(fig.axes[0], "x") == ["0.03", "0.1", "0.3", "1", "3", "10"]
    assert "epochs" not in fig._suptitle.get_text()  # not known: not claimed


def test_sweep_report_says_how_many_epochs_the_runs_had(tmp_path):
    runs = tmp_path / "runs"
    for alpha in ALPHAS:
        run = make_run(runs, alpha, 0, kl=1.0 / (1 + alpha), elbo=-150.0 - alpha)
        (run / "status.json").write_text(json.dumps({"status": "finished", "epochs_done": 25,
                                                     "max_epochs": 25}))
    report(runs, tmp_path / "out")
    assert (tmp_path / "out/alpha_tradeoff.png").stat().st_size > 10_000
    found = find_runs(runs)  # what report() draws, drawn again to read its title
    assert epochs_trained(found) == [25] * len(ALPHAS)
    title = tradeoff_figure(summarise(found), epochs_trained(found))._suptitle.get_text()
    assert "runs of 25 epochs" in title and "1 seeds" in title


def test_ticks_alpha_axis_without_a_plain_vae():
    fig = tradeoff_figure(rows_for([0.3, 1.0, 3.0]))
    ax = fig.axes[0]
    assert tick_texts(ax, "x") == ["0.3", "1", "3"] and 0 < ax.get_xlim()[0] < 0.3
    assert ticks.plain(1e4) == "1e+04" and ticks.plain(0.30000000000000004) == "0.3"


# --- Fig. 2: one scale in every zoomed panel, boxes on the overview, readable x and x' --------
def test_zoomed_panels_share_one_scale_and_the_overview_draws_their_boxes():
    torch.manual_seed(0)
    all_mu = torch.randn(500, 2)
    mu, logvar = all_mu[:3], torch.tensor([[-4.0, -4.0], [-1.0, -2.0], [-3.0, -3.0]])
    mu_prime = mu + torch.tensor([[0.05, 0.0], [0.8, -0.4], [0.0, 0.1]])  # drifts far apart
    fig = figures.latent_drift_figure(mu, logvar, mu_prime, logvar - 0.5, torch.rand(3),
                                      torch.tensor([0, 1, 2]), all_mu, torch.randint(0, 10, (500,)),
                                      (0, 1), images=torch.rand(3, 28, 28),
                                      images_prime=torch.rand(3, 28, 28))
    *panels, overview = [ax for ax in fig.axes if ax.get_title()]
    half = figures.drift_half_width(mu, logvar, mu_prime, logvar - 0.5, (0, 1))
    for ax in panels:  # float64 limits from the same half-width: equal to rounding
        for lo, hi in (ax.get_xlim(), ax.get_ylim()):
            assert hi - lo == pytest.approx(2 * half, rel=1e-9)  # float64 on both sides
    boxes = [p for p in overview.patches if isinstance(p, Rectangle)]
    widths = [b.get_width() for b in boxes]
    assert len(boxes) == 3 and widths == pytest.approx([2 * half] * 3, rel=1e-9)  # float64, as above
    assert not [c for c in overview.collections if np.asarray(c.get_sizes()).max() > 100]  # no stars
    for ax in panels:
        for inset in ax.child_axes:
            assert inset.xaxis.label.get_fontsize() >= 11  # x and x' read at the panel's size
