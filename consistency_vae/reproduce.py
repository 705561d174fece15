"""`consistency-vae reproduce` (`make reproduce`): the paper's experiment and ours, end to end.

    make reproduce                       # 3 seeds x 25 epochs, everything below
    make reproduce SEEDS=1 EPOCHS=5      # a quicker version

Trains, for MNIST and Fashion-MNIST, the plain VAE (alpha = 0) and the consistency VAE
(alpha = 1) in the paper's setting (784-400-2 MLP, 25 epochs) and in a higher-capacity one
(20-D latent); an alpha sweep; and the constrained mode (KL(z'||z) <= kl_target, beyond the
paper). Then it evaluates every last checkpoint (the paper reports "after 25 epochs") and writes
``results/``: summary.json, summary.md and the figures. Interrupted? Run it again: finished runs
and evaluations are kept, unfinished runs resume.
"""

import argparse
import json
import time
from pathlib import Path

from consistency_vae.experiments import Run, run_dir, train_all

from consistency_vae.commands import DefaultsHelpFormatter

SECONDS_PER_EPOCH = 5.0  # per run, 2-D MLP, one thread, 2 runs at once on 2 cores: 25 epochs took ~125 s


def plan(seeds: int, datasets: list[str], sweep_alphas: list[float], sweep_seeds: int,
         kl_target: float, d20_seeds: int) -> list[Run]:
    """Every run of the reproduction, most important first."""
    main = [Run(d, "paper", s, alpha=a) for d in datasets for a in (0.0, 1.0) for s in range(seeds)]
    constrained = [Run(d, "paper", s, alpha=1.0, kl_target=kl_target) for d in datasets
                   for s in range(seeds)]
    sweep = [Run(d, "paper", s, alpha=a) for a in sweep_alphas for d in datasets for s in range(sweep_seeds)]
    d20 = [Run(d, "d20", s, alpha=a) for d in datasets for a in (0.0, 1.0) for s in range(d20_seeds)]
    if "mnist" in datasets and d20_seeds:  # beyond 2-D: constrained against a fixed-alpha sweep
        constrained += [Run("mnist", "d20", s, alpha=1.0, kl_target=kl_target) for s in range(d20_seeds)]
        sweep += [Run("mnist", "d20", 0, alpha=a) for a in sweep_alphas]
    return main + constrained + sweep + d20


def evaluate_all(runs: list[Run], runs_dir: Path, iwae_k: int, iwae_images: int | None,
                 data_dir: str) -> dict[Run, dict]:
    """Evaluate each finished run's last.ckpt into its folder's eval/metrics.json (kept if there)."""
    from consistency_vae.evaluate import evaluate_checkpoint

    results, start = {}, time.perf_counter()
    for i, run in enumerate(runs, 1):
        folder = run_dir(runs_dir, run)
        out = folder / "eval"
        if (out / "metrics.json").is_file():
            results[run] = json.loads((out / "metrics.json").read_text())
            continue
        if not (folder / "DONE").is_file():
            print(f"  evaluate: {run.name} did not finish training; left out")
            continue
        figures = run.setting == "paper" and run.kl_target is None and run.alpha in (0.0, 1.0) \
            and run.seed == 0
        results[run] = evaluate_checkpoint(folder / "checkpoints/last.ckpt", out, iwae_k=iwae_k,
                                           iwae_images=iwae_images, data_dir=data_dir,
                                           figures=figures, progress=False)
        print(f"[eval {i}/{len(runs)}] {run.name}: KL(z'||z) {results[run]['kl_consistency']:.3f}, "
              f"ELBO {results[run]['elbo']:.2f}   ({(time.perf_counter() - start) / 60:.1f} min)",
              flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="consistency-vae reproduce", description=__doc__.split("\n")[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--output", default="results", help="where summary.md, .json and figures go")
    parser.add_argument("--runs_dir", default="runs/reproduce")
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the main comparison")
    parser.add_argument("--epochs", type=int, default=25, help="25 in the paper")
    parser.add_argument("--subset", type=int, default=None, help="first N train/val/test images only")
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist"])
    parser.add_argument("--sweep_alphas", type=float, nargs="*", default=[0.1, 0.3, 3.0, 10.0])
    parser.add_argument("--sweep_seeds", type=int, default=1)
    parser.add_argument("--d20_seeds", type=int, default=2, help="seeds of the 20-D setting (0: skip)")
    parser.add_argument("--kl_target", type=float, default=1.0, help="epsilon of the constrained runs")
    parser.add_argument("--parallel", type=int, default=2, help="runs trained at once")
    parser.add_argument("--iwae_k", type=int, default=1000)
    parser.add_argument("--iwae_images", type=int, default=1000, help="test images for IWAE (all: 0)")
    args = parser.parse_args(argv)

    from consistency_vae import data_files, summary

    for name in args.datasets:
        data_files.prepare(args.data_dir, name)
    runs = plan(args.seeds, args.datasets, args.sweep_alphas, args.sweep_seeds, args.kl_target,
                args.d20_seeds)
    runs_dir = Path(args.runs_dir)
    todo = [r for r in runs if not (run_dir(runs_dir, r) / "DONE").is_file()]
    fraction = min(1.0, (args.subset or 50_000) / 50_000)
    minutes = len(todo) * args.epochs * SECONDS_PER_EPOCH * fraction / max(1, args.parallel) / 60
    print(f"reproduce: {len(runs)} runs ({len(runs) - len(todo)} already done), {args.epochs} epochs "
          f"each; expected about {minutes:.0f} min of training on a 2-core CPU, then evaluation.",
          flush=True)
    failed = train_all(todo, runs_dir, args.epochs, args.subset, args.data_dir, args.parallel)
    results = evaluate_all(runs, runs_dir, args.iwae_k, args.iwae_images or None, args.data_dir)
    summary.write_all(runs, results, runs_dir, Path(args.output), args)
    if failed:
        print(f"reproduce: {len(failed)} runs failed and are left out: {[r.name for r in failed]}")
    print(f"reproduce: wrote {args.output}/summary.md")
