"""`consistency-vae bench --pack N`: model-steps per second, packed against solo, on this machine.

Solo: each process is a Lightning ``fit`` of one ConsistencyVAE (MLP 784-400-2, batch 128, MNIST).
Packed: each process trains a pack of N members (alphas and seeds varied) with ``packed.step.Pack``.
Printed: model-steps per second of each side (summed over the processes; a pack's step is N
model-steps) and their ratio. ``auto`` packing should stay solo where the ratio is below
AUTO_MIN_RATIO (docs/scaling.md, "Packed training (CPU)").

``--accelerator cpu`` (the default): both sides run as today's CPU runs do, WORKERS processes at
once, one thread each (the project's thread rule, threads.py). ``--accelerator gpu`` (``auto``: gpu
where torch sees one): ONE process per side, since processes share the one GPU and would time each
other's kernels (how many solo fits share it well is scripts/gpu_check.py's ``parallel`` step). The
solo fit keeps the dataset on the GPU (``data.on_device``, fit's default), the pack its images,
batch order and noise; every clock is read after ``torch.cuda.synchronize()`` (kernels run
asynchronously: a clock read without it times their launches), after GPU_WARMUP untimed steps.
``--json FILE`` also writes the numbers to FILE (scripts/gpu_check.py reads them).
"""

import argparse
import json
import os
import subprocess
import sys
import time

WORKERS = 2  # the 2-core CPU's reproduction runs two solo processes side by side
WARMUP = 3  # untimed steps: the first allocate buffers and warm the caches
GPU_WARMUP = 10  # on a GPU the first steps also create the CUDA context, cuBLAS handles, allocator pools
# (and, for the graphed pack, graph.WARMUP eager steps and the recording)
GPU_STEPS = 300  # timed steps per side on a GPU: a step of any pack up to 64 is milliseconds there
AUTO_MIN_RATIO = 0.9  # packing pays where it is at most 10% slower per run than solo


def plan(accelerator: str, n: int, steps: int | None) -> dict[str, int]:
    """Processes per side, untimed and timed steps of each, for a resolved accelerator (cpu/gpu)."""
    if accelerator == "gpu":
        return {"workers": 1, "warmup": GPU_WARMUP, "solo_steps": steps or GPU_STEPS,
                "pack_steps": steps or GPU_STEPS}
    # a CPU step of a pack of N is about N solo steps of arithmetic: fewer steps, the same seconds
    return {"workers": WORKERS, "warmup": WARMUP, "solo_steps": steps or 300,
            "pack_steps": steps or max(10, 300 // n)}


def resolve_accelerator(accelerator: str) -> str:
    """``--accelerator`` as cpu or gpu; gpu where torch sees no GPU is the user's mistake."""
    import torch

    from consistency_vae.errors import ConfigError

    if accelerator == "gpu" and not torch.cuda.is_available():
        raise ConfigError("--accelerator gpu: no GPU that torch can use here: use --accelerator cpu, "
                          "or auto to use a GPU only where there is one")
    return "gpu" if accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available()) else "cpu"


def _clock(accelerator: str) -> float:
    """perf_counter once the device has run every kernel queued so far."""
    if accelerator == "gpu":
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


def solo_worker(data_dir: str, steps: int, accelerator: str = "cpu", warmup: int = WARMUP) -> float:
    """Model-steps per second of a Lightning fit of one model, after ``warmup`` steps."""
    from lightning import Callback, Trainer

    from consistency_vae.datamodule import MNISTDataModule
    from consistency_vae.model import ConsistencyVAE

    class Clock(Callback):
        start = end = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == warmup:  # steps done so far
                self.start = _clock(accelerator)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == warmup + steps:  # this batch's optimizer step is counted
                self.end = _clock(accelerator)

    clock = Clock()
    trainer = Trainer(max_steps=warmup + steps, accelerator=accelerator, devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, callbacks=[clock])
    # on a GPU the dataset lives there, as fit's default data.on_device puts it (set up by fit)
    dm = MNISTDataModule(data_dir=data_dir, on_device=accelerator == "gpu")
    trainer.fit(ConsistencyVAE(alpha=1.0), datamodule=dm)
    if clock.end <= clock.start:
        raise RuntimeError(f"bench: the solo clock read {clock.start} then {clock.end}: its callback "
                           "missed the first or last timed step")
    return steps / (clock.end - clock.start)


def pack_worker(data_dir: str, steps: int, n: int, accelerator: str = "cpu", warmup: int = WARMUP,
                capture: bool = False) -> float:
    """Model-steps per second of a pack of n (seeds 0..n-1, alpha 0.3 or 3 alternately), as a packed
    run trains it (packed/fit.py): images, batch order and noise on the pack's device; with
    ``capture``, its step replayed as a CUDA graph (packed/graph.py: recorded within the warmup)."""
    import torch

    from consistency_vae.datamodule import MNISTDataModule
    from consistency_vae.packed import data
    from consistency_vae.packed.graph import CapturedStep
    from consistency_vae.packed.members import PackMember, build_models
    from consistency_vae.packed.step import Pack

    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    members = [PackMember(seed, 0.3 if seed % 2 else 3.0) for seed in range(n)]
    dm = MNISTDataModule(data_dir=data_dir, on_device=False)
    dm.setup("fit")
    pack = Pack(members, build_models(members), warmup + steps, device)
    train_step = CapturedStep(pack) if capture else pack.train_step
    seeds = [m.seed for m in members]
    order = data.pack_order(dm.train_set, 128, seeds, 0).to(device)  # (batches, N, B)
    images = dm.train_set.images.to(device)
    for step in range(warmup + steps):
        if step == warmup:
            start = _clock(accelerator)
        noise = data.train_noise(seeds, step, 128, 2, device)
        train_step(images[order[step % len(order)]], noise)
    return n * steps / (_clock(accelerator) - start)


def side(kind: str, n: int, steps: int, data_dir: str, accelerator: str = "cpu",
         workers: int = WORKERS) -> float:
    """``workers`` processes of one kind at once, one thread each: their model-steps/s, summed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "consistency_vae.packed.bench", "--worker", kind, "--pack", str(n),
           "--steps", str(steps), "--data_dir", data_dir, "--accelerator", accelerator]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(workers)]
    rates = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=1800)
            if proc.returncode != 0:
                tail = "\n".join(err.strip().splitlines()[-5:])
                raise RuntimeError(f"bench worker {' '.join(cmd)} exited with {proc.returncode}:\n{tail}")
            rates.append(json.loads(out.strip().splitlines()[-1])["rate"])
    finally:  # a worker that failed or hung does not outlive the bench
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return sum(rates)


def main(argv: list[str] | None = None) -> dict[str, float | str]:
    from consistency_vae import atomic, cli_help
    from consistency_vae.errors import ConfigError

    parser = cli_help.command_parser("consistency-vae bench", __doc__.split("\n")[0])
    parser.add_argument("--pack", type=int, required=True, help="members per packed process")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per process; default: 300 solo, max(10, 300 // N) packed on a "
                             f"CPU, {GPU_STEPS} each on a GPU")
    parser.add_argument("--data_dir", type=str, default="data", help="the datasets folder")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu", "auto"],
                        help=f"where both sides train: cpu ({WORKERS} processes per side, 1 thread each), "
                             "gpu (1 process per side), auto (gpu where torch sees one)")
    parser.add_argument("--json", type=str, default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--worker", choices=["solo", "pack", "graph"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pack < 1:
        raise ConfigError(f"--pack {args.pack}: give the number of members per process, >= 1")
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps {args.steps}: give at least 1 timed step per process")
    accelerator = resolve_accelerator(args.accelerator)
    p = plan(accelerator, args.pack, args.steps)
    if args.worker is not None:  # one timed process (side() starts them)
        steps = args.steps or 300
        rate = (solo_worker(args.data_dir, steps, accelerator, p["warmup"]) if args.worker == "solo"
                else pack_worker(args.data_dir, steps, args.pack, accelerator, p["warmup"],
                                 capture=args.worker == "graph"))
        print(json.dumps({"rate": rate}))
        return {"rate": rate}
    device = _device_name(accelerator)
    if accelerator == "gpu":
        where = "1 process per side (processes would share the one GPU), 1 CPU thread"
    else:
        where = f"{WORKERS} processes at once, 1 thread each"
    print(f"bench --pack {args.pack}: device={device}, {where}; MLP 784-400-2, batch 128", flush=True)
    solo = side("solo", 1, p["solo_steps"], args.data_dir, accelerator, p["workers"])
    packed = side("pack", args.pack, p["pack_steps"], args.data_dir, accelerator, p["workers"])
    rows = [("solo (Lightning fit, 1 model per process)", solo),
            (f"packed ({args.pack} models per process)", packed)]
    result = {"device": device, "pack": args.pack, **p, "solo": solo, "packed": packed,
              "ratio": packed / solo}
    if accelerator == "gpu":  # the step as one CUDA graph (packed/graph.py): nothing to capture on a CPU
        graphed = side("graph", args.pack, p["pack_steps"], args.data_dir, accelerator, p["workers"])
        rows.append((f"packed, CUDA graph ({args.pack} per process)", graphed))
        result |= {"packed_graph": graphed, "ratio_graph": graphed / solo}
    for name, rate in rows:
        print(f"  {name:<42}: {rate:7.1f} model-steps/s")
    ratio = result["ratio"]
    verdict = "packing pays" if ratio >= AUTO_MIN_RATIO else "auto stays solo here"
    print(f"  packed / solo: {ratio:.2f} ({verdict}: the bar is {AUTO_MIN_RATIO:g})")
    if "ratio_graph" in result:
        print(f"  packed with a CUDA graph / solo: {result['ratio_graph']:.2f}")
    if args.json:
        atomic.write_text(args.json, json.dumps(result, indent=1))
    return result


def _device_name(accelerator: str) -> str:
    """``cpu``, or ``cuda (NAME)``: the header says which GPU the numbers are of."""
    if accelerator != "gpu":
        return "cpu"
    import torch

    return f"cuda ({torch.cuda.get_device_name()})"


def asks_for_pack(argv: list[str] | None) -> bool:
    """Whether a `bench` command line asks for this bench (consistency_vae/bench.py's hook)."""
    argv = sys.argv[1:] if argv is None else argv
    return any(a == "--pack" or a.startswith("--pack=") for a in argv)


if __name__ == "__main__":
    main()
