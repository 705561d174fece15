"""`consistency-vae reproduce` (`make reproduce`): the paper's experiment and ours, end to end.

    make reproduce                       # the four sweeps of sweeps/reproduce_*.yaml, 220 runs
    make reproduce SEEDS=1 EPOCHS=5      # a quicker version
    consistency-vae reproduce --from-runs DIR   # only evaluate and summarise runs trained elsewhere
    consistency-vae reproduce --eval_parallel 8 # 8 checkpoints evaluated at once (worker processes)
    consistency-vae reproduce --from-summary results/summary.json   # only the tables, from its runs

The reproduction is a set of sweep files, run by the same runner as any sweep
(``consistency-vae sweep``, sweep/runner.py): for MNIST and Fashion-MNIST, 2-D and 20-D latents,
alpha = 0 against alpha = 1 with 10 seeds (``reproduce_claims.yaml``: the claims' paired comparisons),
the rest of the fixed-alpha front, alpha in {0.1, 0.3, 3, 10, 30}, with 5 seeds
(``reproduce_front.yaml``), and the constrained mode at two epsilons per setting with 5 seeds
(``reproduce_constrained_2d.yaml``, ``..._20d.yaml``); 25 epochs each.
Then every finished run's last.ckpt is evaluated (the paper reports "after 25 epochs"; a run whose
last.ckpt is an earlier epoch stops the reproduction with its name) and ``results/`` is written:
summary.json, summary.md and the figures. Interrupted? Run it again: finished runs and evaluations
are kept, cut-off runs resume, failed ones are tried again. On another machine, or with the run
folders gone: the runs recorded in --output's summary.json are kept, and only the others are trained
(kept.py), so a reproduction can be done in pieces (``--datasets``, ``--latent_dims``, ``--seeds``).
"""

import os
import sys
import time
from pathlib import Path

from consistency_vae import cli_help, data_files, threads
from consistency_vae.errors import ConfigError, UserError
from consistency_vae.evaluation import evaluate_args
from consistency_vae.reproduction import evaluators, kept
from consistency_vae.reproduction.runs import Run, check_last_epochs, from_folders, from_records
from consistency_vae.sweep import claims, packs
from consistency_vae.sweep.runner import run_sweep
from consistency_vae.sweep.store import SweepStore, run_key
from consistency_vae.sweep.sweep_file import absent_values, check_against_cli, grid_points, load_sweep, select
from consistency_vae.user_files import check_output_folder

SWEEPS = ["sweeps/reproduce_claims.yaml", "sweeps/reproduce_front.yaml",
          "sweeps/reproduce_constrained_2d.yaml", "sweeps/reproduce_constrained_20d.yaml"]
WAIT_S = 30.0  # how often to look again at runs that another runner trains or evaluates
SECONDS_PER_EPOCH = 5.0  # per run, 2-D MLP, one thread, 2 runs at once on 2 cores: 25 epochs took ~125 s


def sweep_arguments(args) -> tuple[list[str], dict[str, list]]:
    """The quick options as the runner's extra arguments and its grid filter."""
    extra = [f"--trainer.max_epochs={args.epochs}"] if args.epochs else []
    extra += [f"--data.subset={args.subset}"] if args.subset else []
    extra += [f"--data.data_dir={args.data_dir}"] if args.data_dir != "data" else []
    only = {"seed_everything": list(range(args.seeds))} if args.seeds else {}
    if args.datasets:
        only["data.dataset"] = list(args.datasets)
    if args.latent_dims:
        only["model.latent_dim"] = list(args.latent_dims)
    return extra, only


def check_picks(args) -> None:
    """--seeds, --datasets and --latent_dims before any work: a count below 1, or a value that picks
    none of the sweep files' grid points (a typo: it would train nothing, or only the other values'
    runs), stops the command, naming what the files have."""
    if args.seeds is not None and args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: give N >= 1, the first N seeds of each group "
                          "(or leave it out for all)")
    if args.from_runs or args.from_summary:  # gathered runs or records: no grid to pick from
        return
    points = [p for sweep_file in args.sweeps for p in grid_points(load_sweep(sweep_file))]
    for flag, name, values in (("--datasets", "data.dataset", args.datasets),
                               ("--latent_dims", "model.latent_dim", args.latent_dims)):
        missing, have = absent_values(points, name, values or [])
        if missing:
            raise ConfigError(f"{flag} {' '.join(map(str, missing))}: no grid point of "
                              f"{' '.join(args.sweeps)} has it; they have {' '.join(map(str, sorted(have)))}")


def check_counts(args) -> None:
    """Counts that must be >= 1 (0 for --iwae_images: all), checked before any work: the evaluation
    flags would otherwise be refused only after hours of training, and --epochs 0 or --subset 0
    (falsy) would silently mean the sweep files' 25 epochs on all the data."""
    counts = {"--parallel": args.parallel, "--epochs": args.epochs, "--subset": args.subset,
              "--iwae_k": args.iwae_k, "--gap_images": args.gap_images,
              "--iwae_images": None if args.iwae_images == 0 else args.iwae_images}
    if bad := [f"{flag} {value}" for flag, value in counts.items() if value is not None and value < 1]:
        raise ConfigError(f"{', '.join(bad)}: give a whole number >= 1 (--iwae_images 0: all the test "
                          "images; leave --epochs and --subset out for the sweep files' 25 epochs on all "
                          "the data)")


def picked(runs: list[Run], args) -> list[Run]:
    """The gathered runs (--from-runs) that --datasets, --latent_dims and --seeds pick, as they pick
    grid points to train."""
    return [r for r in runs if (not args.datasets or r.dataset in args.datasets)
            and (not args.latent_dims or r.latent_dim in args.latent_dims)
            and (not args.seeds or r.seed < args.seeds)]


def train(args, skip: set[str] = frozenset()) -> tuple[list[Run], int]:
    """Run the reproduction's sweeps, but for the grid points of the ``skip`` sweep keys (recorded by
    an earlier reproduction, kept.py); return the finished runs of this setting and the failures."""

    os.environ.setdefault("WANDB_MODE", "disabled")  # WANDB_MODE=offline or online keeps W&B
    extra, only = sweep_arguments(args)
    for sweep_file in args.sweeps:  # a command the CLI refuses (a path relative to another folder):
        check_against_cli(sweep_file, load_sweep(sweep_file),  # one line now, not each run's log
                          [f"--trainer.default_root_dir={args.runs_dir}", *extra])
    for name in args.datasets or data_files.DATASETS:
        data_files.prepare(args.data_dir, name)
    stores, todo = [], 0
    for sweep_file in args.sweeps:
        config = load_sweep(sweep_file)
        store = SweepStore(Path(args.runs_dir) / f"sweep-{config['name']}", sweep_file, config)
        records = store.records()
        keys = {run_key(p, extra) for _, p in select(grid_points(config), only)} - skip
        todo += sum(store.state(key, records)[0] != "finished" for key in keys)
        stores.append((store, keys))
    epochs = args.epochs or 25
    fraction = min(1.0, (args.subset or 50_000) / 50_000)
    minutes = todo * epochs * SECONDS_PER_EPOCH * fraction / args.parallel / 60
    expected = f"about {minutes:.0f} min" if minutes >= 1 else "under a minute"  # not "about 0 min"
    print(f"reproduce: {todo} runs to train ({epochs} epochs each), expected {expected} on "
          f"a 2-core CPU, then evaluation."
          + (f" {len(skip)} runs are kept from {args.output}/summary.json." if skip else ""), flush=True)
    failed = 0
    for sweep_file in args.sweeps:
        failed += run_sweep(sweep_file, args.parallel, runs_dir=args.runs_dir, extra_args=extra,
                            only=only, threads=args.threads, pack=args.pack, skip=skip)["failed"]
    wait_for_other_runners(stores)
    runs = [run for store, keys in stores
            for run in from_records([r for r in store.records() if r.get("key") in keys])]
    return sorted(runs, key=lambda r: r.order), failed


def held_elsewhere(claim: Path) -> bool:
    held = claims.read(claim)
    return held is not None and claims.is_alive(*held)


def wait_for_other_runners(stores: list) -> None:
    """Runs of this reproduction that another runner trains right now (the same command started
    twice, a SLURM task): wait for them, so that the summary has every run."""
    while busy := [key for store, keys in stores for key in keys
                   if store.state(key)[0] == "todo" and held_elsewhere(store.claim_path(key))]:
        print(f"reproduce: waiting for {len(busy)} runs that another runner trains now", flush=True)
        time.sleep(WAIT_S)


def evaluate_all(runs: list[Run], iwae_k: int, iwae_images: int | None, data_dir: str,
                 gap_images: int = 200, parallel: int = 1, requested_threads: int | None = None,
                 quadrature_points: int = evaluate_args.QUADRATURE_POINTS) -> dict[Run, dict]:
    """Evaluate each run's last.ckpt into its folder's eval/metrics.json (kept if there): every
    default metric and the inference gaps (on the first ``gap_images`` test images), here one at a
    time, or by ``parallel`` worker processes of ``requested_threads`` threads (evaluators.py). A
    run that another runner evaluates now is passed over and read when it is done, so two
    reproductions started side by side evaluate different runs at once."""
    settings = evaluators.Settings(iwae_k, iwae_images, data_dir, gap_images, quadrature_points)
    results, start, pending = {}, time.perf_counter(), list(runs)
    with evaluators.Evaluators(parallel, requested_threads) as evaluating:
        while pending:
            elsewhere = set()
            for run, metrics in evaluating.completed(pending, settings):  # in the order they end
                if metrics is None:  # another runner's now
                    elsewhere.add(run)
                    continue
                results[run] = metrics
                print(f"[eval {len(results)}/{len(runs)}] {run.name}: KL(z'||z) "
                      f"{metrics['kl_consistency']:.3f}, ELBO {metrics['elbo']:.2f}   "
                      f"({(time.perf_counter() - start) / 60:.1f} min)", flush=True)
            if len(elsewhere) == len(pending):  # nothing left to do here but wait for the others
                names = ", ".join(r.name for r in pending[:3]) + (" ..." if len(pending) > 3 else "")
                print(f"reproduce: waiting for another runner's evaluation of {names}", flush=True)
                time.sleep(WAIT_S)
            pending = [run for run in pending if run in elsewhere]  # in the runs' order
    return {run: results[run] for run in runs}


def make_parser():
    """The command's flags and defaults."""
    parser = cli_help.command_parser("consistency-vae reproduce", __doc__.split("\n")[0])
    parser.add_argument("--output", type=str, default="results",
                        help="where summary.md, .json and figures go")
    parser.add_argument("--runs_dir", type=str, default="runs/reproduce", help="the sweeps' runs and records")
    parser.add_argument("--from-runs", dest="from_runs", type=str | None, default=None, metavar="DIR",
                        help="train nothing: evaluate and summarise the run folders gathered under DIR "
                             "(from `make agent` or SLURM jobs on other machines)")
    parser.add_argument("--from-summary", dest="from_summary", type=str | None, default=None, metavar="FILE",
                        help="train and evaluate nothing: rebuild summary.md, summary.json and the figures "
                             "from the run records in FILE (an earlier summary.json), e.g. after a change "
                             "of the statistics")
    parser.add_argument("--data_dir", type=str, default="data", help="the datasets folder")
    parser.add_argument("--sweeps", type=str, nargs="+", default=SWEEPS,
                        help="the reproduction's sweep files")
    parser.add_argument("--seeds", type=int, default=None,
                        help="the first N seeds only (files: 10 for alpha 0 and 1, else 5); these three "
                             "flags pick gathered runs too (--from-runs)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per run (files: 25, the paper's); with --from-runs, the runs that "
                             "count (else the most common length)")
    parser.add_argument("--subset", type=int, default=None, help="first N train/val/test images only")
    parser.add_argument("--datasets", type=str, nargs="+", default=None, help="e.g. mnist (files: both)")
    parser.add_argument("--latent_dims", type=int, nargs="+", default=None, metavar="D",
                        help="e.g. 2: the paper's setting only (files: 2 and 20)")
    parser.add_argument("--parallel", type=int, default=2, help="runs (or packs) trained at once")
    parser.add_argument("--eval_parallel", type=int, default=1, metavar="P",
                        help="last.ckpt files evaluated at once, each by a worker process "
                             "(1: one after another, in this process)")
    parser.add_argument("--pack", type=str, default="1", metavar="N|auto",
                        help="runs trained together in one process (sweep --pack): auto packs on a GPU")
    parser.add_argument("--threads", type=int | None, default=None,
                        help=f"CPU threads of each run and of the evaluations; null: ${threads.ENV} "
                             f"if set, else {threads.DEFAULT} (more wait on each other on a busy machine)")
    parser.add_argument("--iwae_k", type=int, default=1000)
    parser.add_argument("--iwae_images", type=int, default=1000, help="test images for IWAE (all: 0)")
    parser.add_argument("--gap_images", type=int, default=200,
                        help="test images of the amortisation and approximation gaps")
    parser.add_argument("--quadrature_points", type=int, default=evaluate_args.QUADRATURE_POINTS, metavar="N",
                        help=evaluate_args.QUADRATURE_HELP)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    threads.resolve(args.threads)  # a bad --threads or OMP_NUM_THREADS stops here, before any run
    packs.resolve(args.pack)  # and a bad --pack
    if args.eval_parallel < 1:  # and a bad --eval_parallel, before hours of training
        raise ConfigError(f"--eval_parallel {args.eval_parallel}: give a number of evaluation processes "
                          ">= 1 (1: one checkpoint at a time, in this process)")
    evaluate_args.check_quadrature_points(args.quadrature_points)  # and a bad grid
    check_picks(args)  # and --seeds, --datasets or --latent_dims that pick no grid point
    check_counts(args)  # and a count < 1: --parallel 0, --epochs 0, --iwae_k 0 ...

    from consistency_vae.reproduction import summary  # matplotlib: only to summarise

    # a UserError, here or in the evaluations, reaches cli.py, which prints it on one line
    for flag, folder in (("--output", args.output), ("--runs_dir", args.runs_dir)):
        check_output_folder(folder, flag)
    if args.from_summary:  # the tables again, from the run records of an earlier summary
        if args.from_runs:
            raise UserError("--from-summary and --from-runs: give one (--from-runs evaluates run folders, "
                            "--from-summary rebuilds the tables of an earlier summary.json)")
        if not Path(args.from_summary).is_file():
            raise UserError(f"--from-summary {args.from_summary}: no such file; give an earlier "
                            "summary.json, e.g. results/summary.json")
        if Path(args.from_summary).resolve() != (Path(args.output) / "summary.json").resolve():
            kept.refuse_replacing(Path(args.output), f"--from-summary {args.from_summary}")
        with kept.writing(Path(args.output)):  # not between a piece's reading and writing
            runs = summary.rebuild(Path(args.from_summary), Path(args.output))["runs"]
        print(f"reproduce: wrote {args.output}/summary.md from the {len(runs)} run records of "
              f"{args.from_summary}")
        return
    if args.from_runs:
        kept.refuse_replacing(Path(args.output), f"--from-runs {args.from_runs}")
        runs = picked(from_folders(Path(args.from_runs), args.epochs, args.subset), args)
        failed, kept_records = 0, {}
    else:  # the runs an earlier reproduction recorded in --output are kept, not trained again
        kept_records = kept.records(Path(args.output), args, sweep_arguments(args)[0])
        runs, failed = train(args, set(kept_records))
    if not runs and not kept_records:
        raise UserError(f"no finished run to evaluate in {args.from_runs or args.runs_dir}")
    check_last_epochs(runs)
    threads.apply(args.threads)  # the evaluations run in this process, or in workers that apply it too
    results = evaluate_all(runs, args.iwae_k, args.iwae_images or None, args.data_dir, args.gap_images,
                           args.eval_parallel, args.threads, args.quadrature_points)
    with kept.writing(Path(args.output)):
        if not args.from_runs:  # the latest: another piece into this --output may have ended meanwhile
            kept_records = kept.records(Path(args.output), args, sweep_arguments(args)[0])
        written = summary.write_all(results, Path(args.output), args, kept_records)
    print(f"reproduce: wrote {args.output}/summary.md from {len(written['runs'])} runs"
          + (f" ({len(written['runs']) - len(runs)} kept from its summary.json)" if kept_records else ""))
    if failed:
        sys.exit(f"reproduce: {failed} runs failed (their logs: {args.runs_dir}/sweep-*/logs/) and are "
                 "left out; run the same command again to retry them")
