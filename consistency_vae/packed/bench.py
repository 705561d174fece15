"""`consistency-vae bench --pack N`: model-steps per second, packed against solo, on this machine.

Both sides run as today's CPU runs do: WORKERS processes at once, one thread each (the project's
thread rule, threads.py). Solo: each process is a Lightning ``fit`` of one ConsistencyVAE (MLP
784-400-2, batch 128, MNIST). Packed: each process trains a pack of N members (alphas and seeds
varied) with ``packed.step.Pack``. Printed: model-steps per second of each side (summed over the
processes; a pack's step is N model-steps) and their ratio. ``auto`` packing should stay solo where
the ratio is below AUTO_MIN_RATIO (docs/scaling.md, "Packed training (CPU)").
"""

import argparse
import json
import os
import subprocess
import sys
import time

WORKERS = 2  # the 2-core CPU's reproduction runs two solo processes side by side
WARMUP = 3  # untimed steps: the first allocate buffers and warm the caches
AUTO_MIN_RATIO = 0.9  # packing pays where it is at most 10% slower per run than solo


def _images(data_dir: str):
    from consistency_vae.datamodule import MNISTDataModule

    dm = MNISTDataModule(data_dir=data_dir, on_device=False)
    dm.setup("fit")
    return dm


def solo_worker(data_dir: str, steps: int) -> float:
    """Model-steps per second of a Lightning fit of one model, after WARMUP steps."""
    from lightning import Callback, Trainer

    from consistency_vae.model import ConsistencyVAE

    class Clock(Callback):
        start = end = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == WARMUP:
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.end = time.perf_counter()

    clock = Clock()
    trainer = Trainer(max_steps=WARMUP + steps, accelerator="cpu", devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, callbacks=[clock])
    trainer.fit(ConsistencyVAE(alpha=1.0), datamodule=_images(data_dir))
    return steps / (clock.end - clock.start)


def pack_worker(data_dir: str, steps: int, n: int) -> float:
    """Model-steps per second of a pack of n (seeds 0..n-1, alpha 0.3 or 3 alternately)."""
    import torch

    from consistency_vae.packed import data
    from consistency_vae.packed.members import PackMember, build_models
    from consistency_vae.packed.step import Pack

    members = [PackMember(seed, 0.3 if seed % 2 else 3.0) for seed in range(n)]
    dm = _images(data_dir)
    pack = Pack(members, build_models(members), WARMUP + steps)
    seeds = [m.seed for m in members]
    order = data.pack_order(dm.train_set, 128, seeds, 0)
    images = dm.train_set.images
    for step in range(WARMUP + steps):
        if step == WARMUP:
            start = time.perf_counter()
        noise = data.train_noise(seeds, step, 128, 2, torch.device("cpu"))
        pack.train_step(images[order[step]], noise, epoch=0, step=step)
    return n * steps / (time.perf_counter() - start)


def side(kind: str, n: int, steps: int, data_dir: str) -> float:
    """WORKERS processes of one kind at once, one thread each: their model-steps/s, summed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "consistency_vae.packed.bench", "--worker", kind, "--pack", str(n),
           "--steps", str(steps), "--data_dir", data_dir]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(WORKERS)]
    rates = []
    for proc in procs:
        out, _ = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"bench worker {' '.join(cmd)} exited with {proc.returncode}")
        rates.append(json.loads(out.strip().splitlines()[-1])["rate"])
    return sum(rates)


def main(argv: list[str] | None = None) -> dict[str, float]:
    from consistency_vae import cli_help
    from consistency_vae.errors import ConfigError

    parser = cli_help.command_parser("consistency-vae bench --pack", __doc__.split("\n")[0])
    parser.add_argument("--pack", type=int, required=True, help="members per packed process")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per process; default: 300 solo, max(10, 300 // N) packed")
    parser.add_argument("--data_dir", type=str, default="data", help="the datasets folder")
    parser.add_argument("--worker", choices=["solo", "pack"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pack < 1:
        raise ConfigError(f"--pack {args.pack}: give the number of members per process, >= 1")
    if args.worker is not None:  # one timed process (side() starts them)
        steps = args.steps or 300
        rate = (solo_worker(args.data_dir, steps) if args.worker == "solo"
                else pack_worker(args.data_dir, steps, args.pack))
        print(json.dumps({"rate": rate}))
        return {"rate": rate}
    solo_steps, pack_steps = args.steps or 300, args.steps or max(10, 300 // args.pack)
    print(f"bench --pack {args.pack}: {WORKERS} processes at once, 1 thread each; MLP 784-400-2, batch 128")
    solo = side("solo", 1, solo_steps, args.data_dir)
    packed = side("pack", args.pack, pack_steps, args.data_dir)
    ratio = packed / solo
    for name, rate in (("solo (Lightning fit, 1 model per process)", solo),
                       (f"packed ({args.pack} models per process)", packed)):
        print(f"  {name:<42}: {rate:7.1f} model-steps/s")
    verdict = "packing pays" if ratio >= AUTO_MIN_RATIO else "auto stays solo here"
    print(f"  packed / solo: {ratio:.2f} ({verdict}: the bar is {AUTO_MIN_RATIO:g})")
    return {"solo": solo, "packed": packed, "ratio": ratio}


def asks_for_pack(argv: list[str] | None) -> bool:
    """Whether a `bench` command line asks for this bench (consistency_vae/bench.py's hook)."""
    argv = sys.argv[1:] if argv is None else argv
    return any(a == "--pack" or a.startswith("--pack=") for a in argv)


if __name__ == "__main__":
    main()
