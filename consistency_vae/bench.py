"""`consistency-vae bench`: seconds per training epoch, Lightning ``fit`` against plain PyTorch.

Both sides run the same maths (MLP 784-400-2, batch 128, Adam 1e-3, the full 50k training split,
or its first N images with --subset N: a quicker, noisier check) on the same in-memory tensors, in
the same process, alternating so that machine noise hits both.
Printed: the median epoch time of each, their ratio (target <= 1.15), and the consistency
overhead, fit's epoch time at alpha = 1 over alpha = 0 (target <= 1.5); with each ratio, the
min/median/max over the paired epochs (the epochs run back to back), which says how noisy the
measurement was; and whether each target was met, missed, or is within the noise. Both sides
run with the CPU threads of threads.py's rule (--threads, else OMP_NUM_THREADS, else 1), which the
first line prints with where the number came from.
"""

from __future__ import annotations  # torch's types below are names only: `bench --help` needs no torch

import statistics
import sys
import time
from typing import TYPE_CHECKING

from consistency_vae import cli_help, threads
from consistency_vae.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from consistency_vae.datamodule import MNISTDataModule

FIT_OVER_PLAIN_TARGET = 1.15  # Lightning's bookkeeping may cost at most 15% over a plain loop
OVERHEAD_TARGET = 1.5  # the consistency term (a second encoder pass) at most 50% more per epoch
BATCH = 128  # both sides' batch size: MNISTDataModule's default, the config's


def lightning_epochs(dm: MNISTDataModule, alpha: float, epochs: int, accelerator: str) -> list[float]:
    from lightning import Trainer

    from consistency_vae.model import ConsistencyVAE
    from consistency_vae.timing import EpochTimer

    timer = EpochTimer()
    trainer = Trainer(max_epochs=epochs, accelerator=accelerator, devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, callbacks=[timer])
    trainer.fit(ConsistencyVAE(alpha=alpha), datamodule=dm)
    return timer.times


def plain_epochs(images: torch.Tensor, alpha: float, epochs: int, batch_size: int = BATCH) -> list[float]:
    """The reference: a hand-written loop over the same tensors with the same losses."""
    import torch

    from consistency_vae import losses
    from consistency_vae.networks import MLPDecoder, MLPEncoder

    device = images.device
    encoder, decoder = MLPEncoder(2).to(device), MLPDecoder(2).to(device)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        perm = torch.randperm(len(images), device=device)
        for i in range(len(images) // batch_size):
            x = images[perm[i * batch_size:(i + 1) * batch_size]]
            mu, logvar = encoder(x)
            logits = decoder(losses.reparameterize(mu, logvar))
            mu_p, logvar_p = encoder(torch.sigmoid(logits))
            loss = (losses.bernoulli_nll(logits, x) + losses.kl_to_standard_normal(mu, logvar)
                    + alpha * losses.consistency_kl(mu_p, logvar_p, mu, logvar)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = cli_help.command_parser("consistency-vae bench", __doc__.split("\n")[0] + " With --pack N: "
                                     "packed training against solo instead (consistency-vae bench "
                                     "--pack N --help lists its options).")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per side (after 1 warm-up)")
    parser.add_argument("--data_dir", type=str, default="data", help="the datasets folder")
    parser.add_argument("--subset", type=int | None, default=None, metavar="N",
                        help="time epochs of the first N training images only (null: all 50,000)")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu", "auto"],
                        help="where both sides run")
    parser.add_argument("--threads", type=int | None, default=None, help=threads.HELP)
    args = parser.parse_args(argv)
    if args.epochs < 1:  # else minutes of warm-up end in a median of no epochs
        raise ConfigError(f"--epochs {args.epochs}: give at least 1 timed epoch per side")
    if args.subset is not None and args.subset < BATCH:  # else an epoch of no step
        raise ConfigError(f"--subset {args.subset}: give at least {BATCH} images, one batch (null: all)")
    n_threads, threads_from = threads.resolve(args.threads)  # a bad number stops before any import

    import torch

    from consistency_vae.datamodule import MNISTDataModule
    from consistency_vae.quiet import quiet_libraries

    if args.accelerator == "gpu" and not torch.cuda.is_available():
        raise ConfigError("--accelerator gpu: no GPU that torch can use here: use --accelerator cpu, "
                          "or auto to use a GPU only where there is one")
    quiet_libraries()  # its Trainers print Lightning's tips otherwise, once per timed side
    threads.apply(n_threads)

    torch.manual_seed(0)
    dm = MNISTDataModule(data_dir=args.data_dir, on_device=False, subset=args.subset)
    dm.prepare_data()
    dm.setup()
    device = "cuda" if args.accelerator in ("gpu", "auto") and torch.cuda.is_available() else "cpu"
    images = dm.train_set.images.to(device)
    n = args.epochs + 1  # the first epoch of each side is a warm-up and is dropped
    print(f"bench: {len(images)} images/epoch, batch {BATCH}, MLP 784-400-2, device={device}, "
          f"threads={torch.get_num_threads()} ({threads_from}), {args.epochs} timed epochs per side")

    fit_1, plain_1, fit_0 = [], [], []
    for _ in range(n):  # alternate, one epoch at a time, so load changes hit every side alike
        fit_1 += lightning_epochs(dm, 1.0, 1, args.accelerator)
        plain_1 += plain_epochs(images, 1.0, 1)
        fit_0 += lightning_epochs(dm, 0.0, 1, args.accelerator)
    med, lines = report(fit_1[1:], plain_1[1:], fit_0[1:])
    print("\n".join(lines))
    return med


def _spread(values: list[float]) -> str:
    return f"min {min(values):.3f} / median {statistics.median(values):.3f} / max {max(values):.3f}"


def verdict(name: str, value: float, target: float, paired: list[float]) -> str:
    """One line: the target met or missed, and whether the paired epochs' noise could flip it."""
    met = value <= target
    within_noise = min(paired) <= target < max(paired)
    line = f"  {'met' if met else 'MISSED'}: {name} {value:.3f} {'<=' if met else '>'} target {target:g}"
    if within_noise:
        line += (f"; the paired epochs range from {min(paired):.3f} to {max(paired):.3f}, across the target: "
                 "too noisy to tell, rerun on a quiet machine or with more --epochs")
    return line


def report(fit_1: list[float], plain_1: list[float],
           fit_0: list[float]) -> tuple[dict[str, float], list[str]]:
    """The timed epochs of each side (warm-up dropped) -> (the medians and ratios, the lines to print)."""
    med = {"fit_alpha1": statistics.median(fit_1), "plain_alpha1": statistics.median(plain_1),
           "fit_alpha0": statistics.median(fit_0)}
    med["fit_over_plain"] = med["fit_alpha1"] / med["plain_alpha1"]
    med["consistency_overhead"] = med["fit_alpha1"] / med["fit_alpha0"]
    # epoch i of each side ran back to back: their ratio cancels slow load changes
    over_plain = [f / p for f, p in zip(fit_1, plain_1, strict=True)]
    overhead = [f1 / f0 for f1, f0 in zip(fit_1, fit_0, strict=True)]
    lines = [
        f"  Lightning fit, alpha=1 : {med['fit_alpha1']:.2f} s/epoch   ({_spread(fit_1)})",
        f"  plain PyTorch, alpha=1 : {med['plain_alpha1']:.2f} s/epoch   ({_spread(plain_1)})",
        f"  ratio fit / plain      : {med['fit_over_plain']:.3f}   (target <= {FIT_OVER_PLAIN_TARGET:g}; "
        f"paired epochs: {_spread(over_plain)})",
        f"  Lightning fit, alpha=0 : {med['fit_alpha0']:.2f} s/epoch   ({_spread(fit_0)})",
        f"  consistency overhead   : {med['consistency_overhead']:.3f}   (alpha=1 over alpha=0, target <= "
        f"{OVERHEAD_TARGET:g}; paired epochs: {_spread(overhead)})",
        verdict("ratio fit / plain", med["fit_over_plain"], FIT_OVER_PLAIN_TARGET, over_plain),
        verdict("consistency overhead", med["consistency_overhead"], OVERHEAD_TARGET, overhead),
    ]
    return med, lines


_solo_bench = main


def main(argv: list[str] | None = None) -> dict[str, float]:
    """`bench`; with --pack N, packed training against solo instead (consistency_vae/packed/bench.py)."""
    given = sys.argv[1:] if argv is None else argv
    # packed/bench.asks_for_pack's test, here: importing consistency_vae.packed imports torch,
    # which `bench --help` should not wait for (tests/test_startup.py)
    if not any(a == "--pack" or a.startswith("--pack=") for a in given):
        return _solo_bench(argv)
    from consistency_vae.packed import bench as packed

    return packed.main(argv)
