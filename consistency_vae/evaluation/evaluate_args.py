"""The options of ``consistency-vae evaluate``, apart from the evaluation itself: parsing them
(``--help``, a mistyped flag) loads neither torch nor Lightning (commands.evaluate_main)."""

from consistency_vae import cli_help, threads
from consistency_vae.errors import ConfigError

DESCRIPTION = "consistency-vae evaluate: metrics.json, figures and a table for one checkpoint."
# quadrature.POINTS, the n of log p(x)'s n x n grid, written here because this module loads no torch
# (tests/test_quadrature.py checks that the two agree); reproduce's flag has the same default
QUADRATURE_POINTS = 401
QUADRATURE_HELP = ("n of the n x n grid over [-5, 5]^2 of log p(x) by quadrature, 2-D latents only "
                   "(time ~ n^2; 401: spacing 0.025)")


def check_quadrature_points(points: int) -> None:
    """A grid needs two points per axis to have a spacing."""
    if points < 2:
        raise ConfigError(f"--quadrature_points {points}: give at least 2 grid points per axis "
                          f"({QUADRATURE_POINTS}, the default, has spacing 0.025; 101 has 0.1)")


def parser():
    """The command's jsonargparse parser; ``--help`` shows each option's type and default."""
    p = cli_help.command_parser("consistency-vae evaluate", DESCRIPTION)
    p.add_argument("--ckpt_path", type=str, required=True, help="a .ckpt written by `consistency-vae fit`")
    p.add_argument("--output", type=str, required=True, help="folder for metrics.json and the PNGs")
    cli_help.add_data_overrides(p, "the checkpoint's", "the checkpoint's")
    p.add_argument("--iwae_k", type=int, default=1000, help="importance samples per image")
    p.add_argument("--iwae_images", type=int | None, default=None,
                   help="IWAE on the first N test images only (quick)")
    p.add_argument("--device", type=str, default="auto",
                   help="auto (a GPU if there is one), cpu, cuda, cuda:1")
    p.add_argument("--threads", type=int | None, default=None, help=threads.HELP)
    p.add_argument("--seed", type=int, default=0, help="seed of every sampled number")
    p.add_argument("--metrics", type=str, nargs="+", default=[], metavar="NAME",
                   help="opt-in metrics to add to the defaults: inference_gaps (slow), or my_module.NAME "
                        "(a module registering NAME in eval_metrics)")
    p.add_argument("--mi_batch", type=int, default=100, help="B of the mutual information estimate")
    p.add_argument("--gap_images", type=int, default=100, help="test images of inference_gaps")
    p.add_argument("--quadrature_points", type=int, default=QUADRATURE_POINTS, metavar="N",
                   help=QUADRATURE_HELP)
    p.add_argument("--no_figures", action="store_true", help="write metrics.json only")
    p.add_argument("--overwrite", action="store_true", help="replace an existing metrics.json")
    p.add_argument("--allow_pickle", action="store_true",
                   help="load checkpoints holding arbitrary Python objects (trusted files only)")
    return p
