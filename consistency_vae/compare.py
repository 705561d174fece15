"""``consistency-vae compare A.ckpt B.ckpt --output DIR``: the paper's Fig. 2 from any two
checkpoints, one model above the other, sized and saved for print.

    consistency-vae compare runs/mnist_alpha0.0_seed0/version_0/checkpoints/last.ckpt \\
        runs/mnist_alpha1.0_seed0/version_0/checkpoints/last.ckpt --output fig2

Writes ``DIR/latent_drift_compare.png`` (300 dpi) and ``DIR/latent_drift_compare.pdf`` (vector
lines and text; the clouds of test means embedded at the same dpi), 7.2 inches wide: a page's
text width, so the fonts print at 6.5 to 8.5 pt. Both rows show the same test images with the
same seeded z, and every zoomed panel of both models has one scale, so a longer arrow is a larger
drift. The data are the first checkpoint's own (``datamodule_hyper_parameters``) unless
overridden; the second must be of the same dataset.
"""

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from consistency_vae import cli_help, figures
from consistency_vae.errors import CheckpointError, ConfigError
from consistency_vae.user_files import check_output_folder

NAME = "latent_drift_compare"
WIDTH = 7.2  # inches: the text width of a two-column page (a one-column figure* in IEEE/NeurIPS)
FONT = 7.5  # pt at that width: panel titles; ticks and legends one to two pt smaller


def model_words(hparams, alpha: float) -> str:
    """What a checkpoint is, in a reader's words: ``plain VAE (alpha = 0)``, ``consistency VAE
    (alpha = 1)``, ``constrained, kl_target = 1.3 (final alpha 0.51)``."""
    if hparams.get("alpha_mode") == "constrained":
        return f"constrained, kl_target = {hparams['kl_target']:g} (final alpha {alpha:.2g})"
    return "plain VAE (alpha = 0)" if alpha == 0 else f"consistency VAE (alpha = {alpha:g})"


def source_words(path: Path, epoch: int | None) -> str:
    """``mnist_alpha1.0_seed0/version_0/last.ckpt, after epoch 3`` (epochs counted from 1)."""
    parts = path.parts
    shown = "/".join([*parts[-4:-2], parts[-1]]) if len(parts) >= 4 and parts[-2] == "checkpoints" \
        else path.name
    return shown + (f", after epoch {epoch}" if epoch is not None else "")


def compare_figure(rows: list[tuple[str, dict]], class_names=None) -> Figure:
    """One row per (heading, ``callbacks.latent_drift_data`` dict), one zoom scale for all rows,
    one class legend under them."""
    half = max(figures.drift_half_width(d["mu"], d["logvar"], d["mu_prime"], d["logvar_prime"],
                                        d["dims"]) for _, d in rows)
    n = len(rows[0][1]["labels"])
    panel_rows = 1 if n <= 4 else 2  # as draw_latent_drift lays them out
    side = WIDTH / (-(-n // panel_rows) + 2)  # a panel's share of the width (less its labels), inches
    fig = Figure(figsize=(WIDTH, (panel_rows * (0.85 * side + 0.5) + 0.3) * len(rows) + 0.8), dpi=100,
                 layout="constrained")
    FigureCanvasAgg(fig)
    for sub, (heading, data) in zip(fig.subfigures(len(rows), 1, squeeze=False)[:, 0], rows,
                                    strict=True):
        figures.draw_latent_drift(sub, **data, class_names=class_names, title=heading, half=half,
                                  fontsize=FONT, compact=True)
    overview = fig.subfigs[0].axes[-1]  # every row holds the same test images: one legend
    handles, labels = overview.get_legend_handles_labels()
    legend = fig.legend(handles, labels, loc="outside lower center", ncols=len(labels),
                        fontsize=FONT - 1, title="class", title_fontsize=FONT - 1,
                        handletextpad=0.1, columnspacing=0.8)
    for handle in legend.legend_handles:
        handle.set_sizes([20])
        handle.set_alpha(1.0)
    fig.suptitle(f"q(z|x) (blue) and q(z'|x') (red) of {n} test images, x' = decoder mean at "
                 "z ~ q(z|x); one-sigma\nellipses, one scale in every panel of both rows; panel "
                 "titles: KL(z'||z)", fontsize=FONT + 1)
    return fig


def compare_checkpoints(ckpt_a: str | Path, ckpt_b: str | Path, output: str | Path, *,
                        labels: list[str] | None = None, dataset: str | None = None,
                        data_dir: str | None = None, subset: int | None = None,
                        path: str | None = None, n_images: int = 3, one_per_class: bool = False,
                        seed: int = 0, device: str = "auto", dpi: int = 300,
                        allow_pickle: bool = False) -> list[Path]:
    """Draw both checkpoints' Fig. 2 into ``output/latent_drift_compare.{png,pdf}``; their paths.

    labels: the two rows' headings (default: what each model is, its run and epoch)."""
    from consistency_vae import callbacks
    from consistency_vae.evaluation.evaluate import _datamodule, _device, _load_model, _read_checkpoint

    paths = [Path(ckpt_a), Path(ckpt_b)]
    if labels is not None and len(labels) != 2:
        raise ConfigError(f"--labels {' '.join(labels)}: give two headings, one per checkpoint")
    if n_images < 1 or dpi < 72 or (subset is not None and subset < 1):
        raise ConfigError(f"--n_images {n_images}, --dpi {dpi}, --data.subset {subset}: "
                          "n_images and subset must be >= 1, dpi >= 72 (300 for print)")
    check_output_folder(output, "--output")
    for p in paths:  # before evaluate's reader, whose message names its own --ckpt_path
        if not p.is_file():
            raise CheckpointError(f"{p} does not exist or is not a file: give two .ckpt files written "
                                  "by `consistency-vae fit` (runs/<name>/version_N/checkpoints/)")
    ckpts = [_read_checkpoint(p, allow_pickle) for p in paths]  # a clear error if not ours
    datasets = [c.get("datamodule_hyper_parameters", {}).get("dataset") for c in ckpts]
    if dataset is None and datasets[0] != datasets[1]:
        raise ConfigError(f"{paths[0]} is a {datasets[0]} model and {paths[1]} a {datasets[1]} one: "
                          "compare two checkpoints of one dataset, or pass --data.dataset to show "
                          "both on the same images")
    dev = _device(device)
    dm = _datamodule(paths[0], allow_pickle, dataset=dataset, data_dir=data_dir, subset=subset,
                     path=path)
    images, labels_ = dm.test_set.images, dm.test_set.labels
    rows = []
    for i, (p, ckpt) in enumerate(zip(paths, ckpts, strict=True)):
        model = _load_model(p, dev, allow_pickle)
        with callbacks.eval_mode(model):
            data = callbacks.latent_drift_data(model, images, labels_, n_images, one_per_class, seed)
        epoch = ckpt.get("epoch")  # Lightning's, 0-based
        heading = labels[i] if labels else (
            f"{model_words(model.hparams, float(model.alpha))}: "
            f"{source_words(p, None if epoch is None else epoch + 1)}")
        rows.append((heading, data))
    fig = compare_figure(rows, dm.class_names)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{NAME}.png", out / f"{NAME}.pdf"]
    for target in written:
        fig.savefig(target, dpi=dpi)
    fig.clf()
    return written


def parser():
    """The command's jsonargparse parser; ``--help`` shows each option's type and default."""
    p = cli_help.command_parser("consistency-vae compare", main.__doc__)
    p.add_argument("ckpt_a", type=str, help="the first checkpoint (top row), e.g. the plain VAE's")
    p.add_argument("ckpt_b", type=str, help="the second checkpoint (bottom row)")
    p.add_argument("--output", type=str, required=True, help=f"folder for {NAME}.png and .pdf")
    p.add_argument("--labels", type=str, nargs=2, default=None, metavar=("TOP", "BOTTOM"),
                   help="the rows' headings (default: each model's alpha, run and epoch)")
    cli_help.add_data_overrides(p, "the checkpoints'", "the first checkpoint's")
    p.add_argument("--n_images", type=int, default=3, help="test images shown (the first of each class)")
    p.add_argument("--one_per_class", action="store_true", help="one test image of every class")
    p.add_argument("--seed", type=int, default=0, help="seed of each image's z (evaluate's)")
    p.add_argument("--dpi", type=int, default=300, help="PNG resolution, and the PDF's clouds of means")
    p.add_argument("--device", type=str, default="auto", help="auto (a GPU if there is one), cpu, cuda")
    p.add_argument("--allow_pickle", action="store_true",
                   help="load checkpoints holding arbitrary Python objects (trusted files only)")
    return p


def main(argv: list[str]) -> None:
    """consistency-vae compare: the paper's Fig. 2 for two checkpoints, as print-ready PNG and PDF."""
    args = parser().parse_args(argv).as_dict()
    data = args.pop("data")
    # a UserError reaches cli.py, which prints it on one line
    written = compare_checkpoints(args.pop("ckpt_a"), args.pop("ckpt_b"), args.pop("output"),
                                  **data, **args)
    print("wrote " + ", ".join(str(p) for p in written))
