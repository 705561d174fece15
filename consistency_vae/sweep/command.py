"""``consistency-vae sweep``: the command (sweep_file.py reads the file and proposes the runs,
runner.py runs them)."""

import argparse
import sys
from pathlib import Path

import yaml

from consistency_vae import cli_help, threads
from consistency_vae.errors import ConfigError
from consistency_vae.sweep import packs
from consistency_vae.sweep.runner import run_sweep
from consistency_vae.sweep.store import SweepStore, run_key
from consistency_vae.sweep.sweep_file import (
    check_against_cli,
    check_only_values,
    grid_points,
    load_sweep,
    select,
)
from consistency_vae.user_files import check_output_folder


def list_points(sweep_file: str, runs_dir: str, extra_args: list[str], only: dict | None) -> None:
    """Print each grid point with its index (for ``--index`` / ``sbatch --array``) and status."""
    config = load_sweep(sweep_file)
    store = SweepStore(Path(runs_dir) / f"sweep-{config.get('name') or Path(sweep_file).stem}",
                       sweep_file, config)
    records, points = store.records(), select(grid_points(config), only)
    for i, params in points:
        state, latest = store.state(run_key(params, extra_args), records)
        shown = "finished" if state == "finished" else latest["status"] if latest else "-"
        print(f"{i:4d}  {shown:9s} " + " ".join(f"{k}={v}" for k, v in params.items()))
    print(f"{len(points)} grid points: sbatch --array=0-{len(points) - 1} runs them all")


def parse_only(items: list[str]) -> dict[str, list]:
    """``["seed_everything=0,1", "data.dataset=mnist"]`` -> ``{"seed_everything": [0, 1], ...}``."""
    out = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(f"--only {item!r}: write NAME=V1,V2, e.g. --only seed_everything=0,1")
        out[name] = [yaml.safe_load(v) for v in values.split(",")]
    return out


def main(argv: list[str]) -> None:
    """consistency-vae sweep: run a W&B sweep file on this machine, offline, with W&B's engine."""
    parser = cli_help.command_parser("consistency-vae sweep", main.__doc__)
    parser.add_argument("sweep_file", type=str, help="a W&B sweep YAML, e.g. sweeps/alpha_mnist.yaml")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (each with --threads)")
    parser.add_argument("--threads", type=int | None, default=None,
                        help=f"CPU threads of each run; null: ${threads.ENV} if set, else {threads.DEFAULT} "
                             "(more threads wait on each other on a busy machine)")
    parser.add_argument("--count", type=int, default=None,
                        help="runs to launch (default: the whole grid, or the file's run_cap; "
                             "random/bayes need one of the two)")
    parser.add_argument("--index", type=int, default=None,
                        help="run grid point I only (0-based, as --list numbers them): a SLURM array "
                             "task runs --index $SLURM_ARRAY_TASK_ID")
    parser.add_argument("--only", action="append", default=[], metavar="NAME=V1,V2",
                        help="only the grid points with these values, e.g. --only seed_everything=0")
    parser.add_argument("--pack", type=str, default="1", metavar="N|auto",
                        help="grid points trained together in one process, as one batched program "
                             "(those that differ only in seed, alpha, alpha_mode and kl_target; "
                             "--parallel then counts packs); auto: 64 on a GPU, 1 on a CPU "
                             "(docs/scaling.md, 'Packed sweeps')")
    parser.add_argument("--list", action="store_true", help="print the grid points and their status")
    parser.add_argument("--runs_dir", type=str, default="runs", help="where run folders and wandb/ go")
    parser.add_argument("--extra-args", nargs=argparse.REMAINDER, default=[],
                        help="the rest of the line is added to every run's command, "
                             "e.g. --extra-args --trainer.max_epochs=2")
    args = parser.parse_args(argv)
    only = parse_only(args.only)  # a UserError reaches cli.py, which prints it on one line
    packs.resolve(args.pack)  # a bad --pack, before the sweep file is checked or a run starts
    check_output_folder(args.runs_dir, "--runs_dir")
    if only and (config := load_sweep(args.sweep_file))["method"] == "grid":
        check_only_values(grid_points(config), only, args.sweep_file)  # before a run or a listing
    if args.list:
        return list_points(args.sweep_file, args.runs_dir, args.extra_args, only)
    check_against_cli(args.sweep_file, load_sweep(args.sweep_file),
                      [f"--trainer.default_root_dir={args.runs_dir}", *args.extra_args])
    result = run_sweep(args.sweep_file, args.parallel, args.count, args.runs_dir, args.extra_args,
                       args.index, only, threads=args.threads, pack=args.pack)
    if result["failed"]:
        sys.exit(1)  # after every run has had its go: scripts and CI see that something failed
