"""The CUDA path in one call: what runs on a GPU, and how fast (docs/scaling.md, "On a GPU").

    python scripts/gpu_check.py [--out DIR] [--accelerator gpu] [--quick]

Steps, each timed and printed as one row of the final table (results in OUT/gpu_check.json):
1. the GPU-marked tests (``pytest -m gpu``: evaluate gives the CPU numbers on a GPU);
2. ``consistency-vae bench`` on the GPU: Lightning fit against a plain PyTorch loop;
3. fit, 3 epochs of the default config, in four numeric set-ups: float32; float32 with TF32
   matrix products; bf16-mixed; and float32 with the dataset left on the host
   (``--data.on_device=false``), with the seconds per training epoch and the validation ELBO and
   KL(z'||z) after 3 epochs (bf16 and TF32 must not move them beyond the seed noise);
4. one run of the reproduction (25 epochs, constrained, MNIST 2-D, epsilon 1.5, seed 1) and
   ``evaluate`` of its last checkpoint with the reproduction's settings: the wall time of one run;
5. K copies of a 3-epoch fit at once, to see how many runs one GPU trains side by side;
6. the dataset on the GPU against on the host, in one process, epochs alternating (as bench).
``--steps`` picks some of them (default: all).
``--accelerator cpu --quick`` runs the same steps on a CPU, shorter (a dry run of this script).
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIT_ARGS = ["fit", "--config", "configs/mnist.yaml", "--trainer.callbacks+=consistency_vae.timing.EpochTimer",
            "--trainer.enable_progress_bar=false"]
FIT = [sys.executable, "-m", "consistency_vae", *FIT_ARGS]
# the same fit with TF32 matrix products (torch's float32 "high" precision), set before anything runs
FIT_TF32 = [sys.executable, "-c", "import sys, torch; torch.set_float32_matmul_precision('high'); "
            "from consistency_vae.cli import cli_main; cli_main(sys.argv[1:])", *FIT_ARGS]


def run(cmd: list[str], log: Path, env: dict | None = None, timeout: float = 600) -> tuple[int, float]:
    """Run cmd from the repository root, output to log; (return code, wall seconds)."""
    start = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                                env={**os.environ, **(env or {})}).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, time.perf_counter() - start


def last_row(root: Path) -> tuple[dict, list[float]]:
    """The last validation row of a run's metrics.csv, and its training epochs' seconds."""
    rows = list(csv.DictReader(next(root.rglob("metrics.csv")).read_text().splitlines()))
    val = [r for r in rows if r.get("val/elbo")]
    times = [float(r["time/train_epoch_s"]) for r in rows if r.get("time/train_epoch_s")]
    return (val[-1] if val else {}), times


def fit_setup(out: Path, name: str, args: list[str], fit: list[str] = FIT) -> dict:
    root = out / "runs" / name
    rc, wall = run([*fit, f"--trainer.default_root_dir={root}", *args], out / f"fit_{name}.log")
    row = {"step": f"fit {name}", "rc": rc, "wall_s": round(wall, 1)}
    if rc == 0:
        val, times = last_row(root)
        row |= {"s_per_epoch": round(statistics.median(times[1:] or times), 3),
                "val_elbo": round(float(val["val/elbo"]), 2),
                "val_kl_consistency": round(float(val["val/kl_consistency"]), 3)}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    p.add_argument("--accelerator", default="gpu", choices=["gpu", "cpu"])
    p.add_argument("--quick", action="store_true", help="1-epoch steps (a dry run on a CPU)")
    p.add_argument("--parallel", type=int, default=8, help="K of step 5")
    p.add_argument("--steps", default="tests,bench,precision,run,parallel,placement",
                   help="comma-separated steps to run")
    a = p.parse_args()
    steps = set(a.steps.split(","))
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    epochs = 1 if a.quick else 3
    device = ["--trainer.accelerator", a.accelerator]
    rows: list[dict] = []

    def record(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "gpu_check.json").write_text(json.dumps(rows, indent=1))

    import torch
    record({"step": "torch", "version": torch.__version__, "cuda": torch.cuda.is_available(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"})

    if a.accelerator == "gpu" and "tests" in steps:  # 1. the GPU-marked tests
        rc, wall = run([sys.executable, "-m", "pytest", "tests/test_evaluate.py", "tests/test_alpha_state.py",
                        "-m", "gpu", "-q", "-p", "no:cacheprovider"], out / "pytest_gpu.log")
        record({"step": "pytest -m gpu", "rc": rc, "wall_s": round(wall, 1),
                "tail": (out / "pytest_gpu.log").read_text().strip().splitlines()[-(1 if rc == 0 else 20):]})

    if "bench" in steps:  # 2. bench
        bench(a, out, epochs, record)
    if "precision" in steps:  # 3. numeric set-ups, 3 epochs each
        precision(out, [*device, f"--trainer.max_epochs={epochs}"], record)
    if "run" in steps:  # 4. one reproduction run and its evaluation
        reproduction_run(a, out, device, record)
    if "parallel" in steps:  # 5. K fits side by side
        parallel(a, out, [*device, f"--trainer.max_epochs={epochs}"], record)
    if "placement" in steps:  # 6. where the dataset lives
        placement(a, epochs, record)

    print("\n== gpu_check ==")
    for row in rows:
        print(json.dumps(row))


def bench(a, out: Path, epochs: int, record) -> None:
    rc, wall = run([sys.executable, "-m", "consistency_vae", "bench", "--accelerator", a.accelerator,
                    "--epochs", str(epochs)], out / "bench.log")
    record({"step": "bench", "rc": rc, "wall_s": round(wall, 1),
            "lines": (out / "bench.log").read_text().strip().splitlines()[-7:]})


def precision(out: Path, short: list[str], record) -> None:
    record(fit_setup(out, "float32", short))
    record(fit_setup(out, "tf32", short, FIT_TF32))
    record(fit_setup(out, "bf16_mixed", [*short, "--trainer.precision=bf16-mixed"]))
    record(fit_setup(out, "data_on_host", [*short, "--data.on_device=false"]))



def reproduction_run(a, out: Path, device: list[str], record) -> None:
    run_args = [*device, "--model.alpha_mode=constrained", "--model.kl_target=1.5", "--seed_everything=1",
                f"--trainer.max_epochs={2 if a.quick else 25}"]
    row = fit_setup(out, "reproduction_run", run_args)
    if row["rc"] == 0:
        ckpt = next((out / "runs" / "reproduction_run").rglob("last.ckpt"))
        rc, wall = run([sys.executable, "-m", "consistency_vae", "evaluate", "--ckpt_path", str(ckpt),
                        "--output", str(out / "eval"), "--iwae_images", "1000",
                        "--metrics", "inference_gaps", "--gap_images", "200", "--no_figures",
                        "--device", "cuda" if a.accelerator == "gpu" else "cpu"], out / "evaluate.log")
        row |= {"evaluate_rc": rc, "evaluate_wall_s": round(wall, 1)}
        if rc == 0:
            metrics = json.loads((out / "eval" / "metrics.json").read_text())
            row |= {k: metrics.get(k) for k in ("kl_consistency", "elbo", "iwae_ll", "alpha")}
    record(row)



def parallel(a, out: Path, short: list[str], record) -> None:
    start = time.perf_counter()
    procs = [subprocess.Popen([*FIT, *short, f"--seed_everything={i}",
                               f"--trainer.default_root_dir={out / 'runs' / f'parallel{i}'}"],
                              cwd=ROOT, stdout=open(out / f"parallel{i}.log", "w"),  # noqa: SIM115
                              stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
             for i in range(a.parallel)]
    codes = [proc.wait() for proc in procs]
    wall = time.perf_counter() - start
    per_epoch = [statistics.median(last_row(out / "runs" / f"parallel{i}")[1][1:] or [float("nan")])
                 for i in range(a.parallel) if codes[i] == 0]
    record({"step": f"{a.parallel} fits at once", "rcs": codes, "wall_s": round(wall, 1),
            "s_per_epoch_median": round(statistics.median(per_epoch), 3) if per_epoch else None})


def placement(a, epochs: int, record) -> None:
    """Seconds per training epoch with the dataset on the training device and on the host, the
    two alternating one epoch at a time (the first of each dropped as a warm-up)."""
    from consistency_vae.bench import lightning_epochs
    from consistency_vae.datamodule import MNISTDataModule

    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(epochs + 1):
        for on_device in (True, False):
            dm = MNISTDataModule(on_device=on_device)
            times[on_device] += lightning_epochs(dm, 1.0, 1, a.accelerator)
    record({"step": "dataset placement",
            "on_device_s_per_epoch": [round(t, 3) for t in times[True][1:]],
            "on_host_s_per_epoch": [round(t, 3) for t in times[False][1:]]})


if __name__ == "__main__":
    main()
