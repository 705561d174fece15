"""Project commands beside LightningCLI's fit/validate/test/predict.

Each entry maps a subcommand to a ``main(argv)`` function. Imports happen inside the functions,
so ``consistency-vae fit`` never pays for loading what ``sweep`` needs.
"""

import logging

from consistency_vae import cli_help


def data_main(argv: list[str]) -> None:
    """consistency-vae data: fetch and verify the datasets (what `make data` runs)."""
    from consistency_vae import data_files

    parser = cli_help.command_parser(prog="consistency-vae data", description=data_main.__doc__)
    parser.add_argument("--dataset", choices=[*data_files.DATASETS, "all"], default="all",
                        help="a registered dataset with files to fetch, or all of them")
    parser.add_argument("--data_dir", type=str, default="data", help="the datasets folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = list(data_files.DATASETS) if args.dataset == "all" else [args.dataset]
    for name in names:
        folder = data_files.prepare(args.data_dir, name)
        print(f"{name}: 4 files verified by md5 in {folder}")


def bench_main(argv: list[str]) -> None:
    """consistency-vae bench: seconds per epoch, Lightning fit vs plain PyTorch (make bench)."""
    from consistency_vae import bench

    bench.main(argv)


def evaluate_main(argv: list[str]) -> None:
    """consistency-vae evaluate: metrics.json, figures and a table for one checkpoint."""
    from consistency_vae.evaluation import evaluate_args

    evaluate_args.parser().parse_args(argv)  # --help and a mistyped flag end here, before torch loads
    from consistency_vae.evaluation import evaluate

    evaluate.main(argv)


def compare_main(argv: list[str]) -> None:
    """consistency-vae compare: the paper's Fig. 2 for two checkpoints, as print-ready PNG and PDF."""
    from consistency_vae import compare

    compare.main(argv)


def sweep_main(argv: list[str]) -> None:
    """consistency-vae sweep: run a W&B sweep file on this machine, offline, with W&B's engine."""
    from consistency_vae.sweep import command as sweep

    sweep.main(argv)


def sweep_report_main(argv: list[str]) -> None:
    """consistency-vae sweep-report: alpha_sweep.csv and alpha_tradeoff.png from a sweep's runs."""
    from consistency_vae.sweep import report as sweep_report

    sweep_report.main(argv)


def reproduce_main(argv: list[str]) -> None:
    """consistency-vae reproduce: the paper's experiment and ours, into results/ (make reproduce)."""
    from consistency_vae.reproduction import reproduce

    reproduce.main(argv)


def runs_main(argv: list[str]) -> None:
    """consistency-vae runs: the run folders in a table (setting, epochs, status, test numbers)."""
    from consistency_vae import runs

    runs.main(argv)


COMMANDS = {
    "data": data_main,
    "sweep": sweep_main,
    "sweep-report": sweep_report_main,
    "bench": bench_main,
    "evaluate": evaluate_main,
    "compare": compare_main,
    "reproduce": reproduce_main,
    "runs": runs_main,
}
