"""The CUDA path in one call: what runs on a GPU, and how fast (docs/scaling.md, "On a GPU").

    python scripts/gpu_check.py [--out DIR] [--accelerator gpu] [--quick]

Steps, each timed and printed as one row of the final table (results in OUT/gpu_check.json):
1. the GPU-marked tests (``pytest -m gpu``: evaluate gives the CPU numbers on a GPU; a pack's step
   and a solo fit's, replayed as CUDA graphs, train as the uncaptured steps,
   tests/test_packed_graph.py and tests/test_step_graph.py);
2. ``consistency-vae bench`` on the GPU: Lightning fit against a plain PyTorch loop, with fit's
   step as a CUDA graph (step_graph.py, the default on a GPU) and without (before and after);
3. fit, 3 epochs of the default config, in five set-ups: float32, its step captured and not;
   float32 with TF32 matrix products; bf16-mixed; and float32 with the dataset left on the host
   (``--data.on_device=false``), with the seconds per training epoch and the validation ELBO and
   KL(z'||z) after 3 epochs (bf16 and TF32 must not move them beyond the seed noise);
4. one run of the reproduction (25 epochs, constrained, MNIST 2-D, epsilon 1.5, seed 1) and
   ``evaluate`` of its last checkpoint with the reproduction's settings: the wall time of one run;
   ``pack``: the packed reproduction (docs/scaling.md, "Packed sweeps"): the 20 runs of
   sweeps/reproduce_claims.yaml on MNIST 2-D (alpha 0 and 1, seeds 0-9, 25 epochs) as ONE pack
   (``sweep --pack auto``): its wall time, seconds per run and the first run's final test
   KL(z'||z) and ELBO; ``evaluate`` of two of its checkpoints (seconds per checkpoint, the number
   a packed evaluation has to beat), then of 8 at once (``reproduce --eval_parallel 8``); then
   ``bench --pack N`` on the device for N = 1, 8, 54 (solo, packed, and packed with its step as a
   CUDA graph: before and after the capture);
5. K copies of a 3-epoch fit at once, to see how many runs one GPU trains side by side;
6. the dataset on the GPU against on the host, in one process, epochs alternating (as bench).
``--steps`` picks some of them (default: all).
``--accelerator cpu --quick`` runs the same steps on a CPU, shorter (a dry run of this script;
``pack``: 4 runs of 1 epoch on 512 images in a ``--pack 4``, as auto is 1 on a CPU, and one small
evaluation; no bench, which tests/test_packed_bench.py runs: it checks the path, not the numbers).
Every command runs under a timeout, in its own process group, killed whole when it runs out.
"""

import argparse
import contextlib
import csv
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIT_ARGS = ["fit", "--config", "configs/mnist.yaml", "--trainer.callbacks+=consistency_vae.timing.EpochTimer",
            "--trainer.enable_progress_bar=false"]
FIT = [sys.executable, "-m", "consistency_vae", *FIT_ARGS]
# the same fit with TF32 matrix products (torch's float32 "high" precision), set before anything runs
FIT_TF32 = [sys.executable, "-c", "import sys, torch; torch.set_float32_matmul_precision('high'); "
            "from consistency_vae.cli import cli_main; cli_main(sys.argv[1:])", *FIT_ARGS]


UNCAPTURED = {"CONSISTENCY_VAE_CUDA_GRAPH": "0"}  # the step run eagerly: before step_graph.py
STOP_GRACE_S = 15  # a stopped command's time to stop its own commands (stop below) before SIGKILL


def run(cmd: list[str], log: Path, env: dict | None = None, timeout: float = 600) -> tuple[int, float]:
    """Run cmd from the repository root, output to log; (return code, wall seconds). Past its
    timeout (return code 124), on Ctrl-C or on SIGTERM (main makes it SystemExit), the command goes
    with every process it started: it runs in its own process group, which ``stop`` ends."""
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except BaseException as err:
            stop(proc)
            if not isinstance(err, subprocess.TimeoutExpired):
                raise
            rc = 124
    return rc, time.perf_counter() - start


def stop(proc: subprocess.Popen) -> None:
    """End proc's process group (a sweep's pack process is the runner's child): SIGTERM first, so
    that a command that itself runs run() (this script under a test) stops its commands' groups,
    then SIGKILL for whatever is left."""
    os.killpg(proc.pid, signal.SIGTERM)  # not yet waited for: the group is still ours
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_GRACE_S)
    with contextlib.suppress(ProcessLookupError):  # the group may be gone by now
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def stop_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so that run() stops the command it waits on (Python's default
    would end this process alone and leave that command running)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def last_row(root: Path) -> tuple[dict, list[float]]:
    """The last validation row of a run's metrics.csv, and its training epochs' seconds."""
    rows = list(csv.DictReader(next(root.rglob("metrics.csv")).read_text().splitlines()))
    val = [r for r in rows if r.get("val/elbo")]
    times = [float(r["time/train_epoch_s"]) for r in rows if r.get("time/train_epoch_s")]
    return (val[-1] if val else {}), times


def fit_setup(out: Path, name: str, args: list[str], fit: list[str] = FIT, env: dict | None = None) -> dict:
    root = out / "runs" / name
    rc, wall = run([*fit, f"--trainer.default_root_dir={root}", *args], out / f"fit_{name}.log", env)
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
    p.add_argument("--steps", default="tests,bench,precision,run,pack,parallel,placement",
                   help="comma-separated steps to run")
    a = p.parse_args()
    stop_on_sigterm()
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
        files = ["tests/test_evaluate.py", "tests/test_alpha_state.py", "tests/test_packed_graph.py",
                 "tests/test_step_graph.py", "tests/test_packed_bench.py"]
        rc, wall = run([sys.executable, "-m", "pytest", *files, "-m", "gpu", "-q", "-p", "no:cacheprovider"],
                       out / "pytest_gpu.log")
        record({"step": "pytest -m gpu", "rc": rc, "wall_s": round(wall, 1),
                "tail": (out / "pytest_gpu.log").read_text().strip().splitlines()[-(1 if rc == 0 else 20):]})

    if "bench" in steps:  # 2. bench
        bench(a, out, epochs, record)
    if "precision" in steps:  # 3. numeric set-ups, 3 epochs each
        precision(out, [*device, f"--trainer.max_epochs={epochs}"], record)
    if "run" in steps:  # 4. one reproduction run and its evaluation
        reproduction_run(a, out, device, record)
    if "pack" in steps:  # the packed reproduction, its evaluation, bench --pack
        pack(a, out, record)
    if "parallel" in steps:  # 5. K fits side by side
        parallel(a, out, [*device, f"--trainer.max_epochs={epochs}"], record)
    if "placement" in steps:  # 6. where the dataset lives
        placement(a, epochs, record)

    print("\n== gpu_check ==")
    for row in rows:
        print(json.dumps(row))


def bench(a, out: Path, epochs: int, record) -> None:
    """bench with fit's step as a CUDA graph (the default on a GPU, step_graph.py), then without."""
    for name, env in (("bench", None), ("bench_uncaptured", UNCAPTURED)):
        rc, wall = run([sys.executable, "-m", "consistency_vae", "bench", "--accelerator", a.accelerator,
                        "--epochs", str(epochs)], out / f"{name}.log", env)
        record({"step": name, "rc": rc, "wall_s": round(wall, 1),
                "lines": (out / f"{name}.log").read_text().strip().splitlines()[-7:]})


def precision(out: Path, short: list[str], record) -> None:
    record(fit_setup(out, "float32", short))  # on CUDA its step is a CUDA graph (step_graph.py)
    record(fit_setup(out, "float32_uncaptured", short, env=UNCAPTURED))
    record(fit_setup(out, "tf32", short, FIT_TF32))
    record(fit_setup(out, "bf16_mixed", [*short, "--trainer.precision=bf16-mixed"]))
    record(fit_setup(out, "data_on_host", [*short, "--data.on_device=false"]))



def reproduction_run(a, out: Path, device: list[str], record) -> None:
    run_args = [*device, "--model.alpha_mode=constrained", "--model.kl_target=1.5", "--seed_everything=1",
                f"--trainer.max_epochs={2 if a.quick else 25}"]
    row = fit_setup(out, "reproduction_run", run_args)
    if row["rc"] == 0:
        ckpt = next((out / "runs" / "reproduction_run").rglob("last.ckpt"))
        rc, wall = run(evaluate_cmd(ckpt, out / "eval", a.accelerator), out / "evaluate.log")
        row |= {"evaluate_rc": rc, "evaluate_wall_s": round(wall, 1)}
        if rc == 0:
            metrics = json.loads((out / "eval" / "metrics.json").read_text())
            row |= {k: metrics.get(k) for k in EVAL_KEYS}
    record(row)



# what a row keeps of an evaluation's metrics.json: its numbers, and the seconds of each stage
EVAL_KEYS = ("kl_consistency", "elbo", "iwae_ll", "alpha", "timings")


def evaluate_cmd(ckpt: Path, output: Path, accelerator: str, quick: bool = False) -> list[str]:
    """``evaluate`` of one checkpoint with the reproduction's settings (reproduction/reproduce.py's);
    ``quick``: a few images and samples, log p(x) on a 101 x 101 grid (the CPU dry run checks the path,
    not the numbers)."""
    sizes = (["--iwae_k", "5", "--iwae_images", "20", "--gap_images", "5", "--data.subset", "512",
              "--quadrature_points", "101"] if quick
             else ["--iwae_images", "1000", "--gap_images", "200"])
    return [sys.executable, "-m", "consistency_vae", "evaluate", "--ckpt_path", str(ckpt),
            "--output", str(output), *sizes, "--metrics", "inference_gaps", "--no_figures",
            "--device", "cuda" if accelerator == "gpu" else "cpu"]


# The pack step's time on an H200, from docs/scaling.md's "On a GPU": a solo run trains at 1.88
# s/epoch there, launch-bound (a step is ~4 ms of kernel launches and Python for microseconds of
# arithmetic), so the 20 runs one after another would take 20 x 67 s = 22 minutes. A pack's step is
# one vmapped program, about the launches of one solo step plus 20 small noise draws
# (packed/data.py): guess 2x a solo step, ~3.8 s/epoch, 95 s for 25 epochs, plus the 20 members'
# start (a LightningCLI each), per-epoch test rows and checkpoints, and the last epoch's figures,
# ~2 s per member: about 2.5 minutes. Then 2 evaluations at 14 s, and 3 bench calls of two
# processes (~10 s to start each, ~5 s timed): about 1.5 minutes. In all ~4.5 minutes; whatever
# happens, PACK_BUDGET_S bounds the step (each command's timeout is what is left of it).
PACK_BUDGET_S = {"gpu": 330, "cpu": 1800}  # the CPU's dry run (--quick) is slower than the H200
PACK_RUNS = 20  # sweeps/reproduce_claims.yaml on MNIST 2-D: alpha 0 and 1, seeds 0-9
EVALUATED = 2  # checkpoints evaluated: enough for seconds per checkpoint
EVAL_AT_ONCE = 8  # then this many at once, one process each (reproduce --eval_parallel 8)
QUICK_SEEDS = "0,1"  # --quick: 4 runs (alpha 0 and 1, seeds 0 and 1), 1 epoch on 512 images


def pack(a, out: Path, record) -> None:
    """The packed reproduction slice, its evaluation, then bench --pack (module docstring, step 4)."""
    deadline = time.perf_counter() + PACK_BUDGET_S[a.accelerator]

    def left() -> float:
        return max(1.0, deadline - time.perf_counter())

    runs = out / "runs" / "packed"
    shutil.rmtree(runs, ignore_errors=True)  # else the sweep finds last call's runs finished and skips them
    extra = [f"--trainer.accelerator={a.accelerator}"]
    only = ["--only", "data.dataset=mnist", "--only", "model.latent_dim=2"]
    if a.quick:  # auto is 1 on a CPU: the dry run asks for the pack
        extra += ["--trainer.max_epochs=1", "--data.subset=512"]
        only += ["--only", f"seed_everything={QUICK_SEEDS}"]
    size = 2 * len(QUICK_SEEDS.split(",")) if a.quick else PACK_RUNS
    rc, wall = run([sys.executable, "-m", "consistency_vae", "sweep", "sweeps/reproduce_claims.yaml",
                    "--pack", str(size) if a.quick else "auto", "--parallel", "1", *only,
                    "--runs_dir", str(runs), "--extra-args", *extra], out / "sweep_packed.log",
                   timeout=left())
    records = [json.loads(f.read_text()) for f in sorted(runs.glob("sweep-*/attempts/*.json"))]
    finished = [ROOT / r["run_dir"] for r in records if r.get("status") == "finished" and r.get("run_dir")]
    row = {"step": f"packed reproduction ({size} runs, one pack)", "rc": rc, "wall_s": round(wall, 1),
           "runs_finished": len(finished), "s_per_run": round(wall / max(1, len(finished)), 2),
           "packs": sorted({r.get("pack") for r in records if r.get("pack")})}
    if finished:
        tested = [r for r in csv.DictReader((finished[0] / "metrics.csv").read_text().splitlines())
                  if r.get("test/loss")]
        row["first_run"] = os.path.relpath(finished[0], out)
        if tested:
            row |= {"test_kl_consistency": round(float(tested[-1]["test/kl_consistency"]), 4),
                    "test_elbo": round(float(tested[-1]["test/elbo"]), 3)}
    if rc != 0:
        row["tail"] = (out / "sweep_packed.log").read_text().strip().splitlines()[-10:]
    record(row)

    n_eval = 1 if a.quick else EVALUATED
    evaluated = {"step": f"evaluate, {n_eval} packed runs' last.ckpt", "rcs": [], "wall_s": []}
    for i, folder in enumerate(finished[:n_eval]):
        ckpt = folder / "checkpoints" / "last.ckpt"
        rc, wall = run(evaluate_cmd(ckpt, out / f"eval_packed{i}", a.accelerator, a.quick),
                       out / f"evaluate_packed{i}.log", timeout=left())
        evaluated["rcs"].append(rc)
        evaluated["wall_s"].append(round(wall, 1))
        if rc == 0 and i == 0:
            metrics = json.loads((out / "eval_packed0" / "metrics.json").read_text())
            evaluated |= {k: metrics.get(k) for k in EVAL_KEYS}
    if evaluated["wall_s"]:
        evaluated["s_per_checkpoint"] = round(statistics.mean(evaluated["wall_s"]), 1)
    record(evaluated)

    # what `reproduce --eval_parallel P` would do on this device: P evaluations at once
    at_once = finished[:2 if a.quick else EVAL_AT_ONCE]
    start = time.perf_counter()
    with ThreadPoolExecutor(max(1, len(at_once))) as pool:  # each run() is a process (group) of its own
        jobs = [pool.submit(run, evaluate_cmd(f / "checkpoints" / "last.ckpt", out / f"eval_at_once{i}",
                                              a.accelerator, a.quick), out / f"evaluate_at_once{i}.log",
                            None, left()) for i, f in enumerate(at_once)]
        rcs = [job.result()[0] for job in jobs]
    wall = time.perf_counter() - start
    record({"step": f"evaluate, {len(at_once)} checkpoints at once", "rcs": rcs, "wall_s": round(wall, 1),
            "s_per_checkpoint": round(wall / max(1, len(at_once)), 2)})

    for n in () if a.quick else (1, 8, 54):  # the dry run: tests/test_packed_bench.py runs bench --pack
        numbers = out / f"bench_pack{n}.json"
        quick = ["--steps", "3"] if a.quick else []
        rc, wall = run([sys.executable, "-m", "consistency_vae", "bench", "--pack", str(n), "--accelerator",
                        a.accelerator, "--json", str(numbers), *quick], out / f"bench_pack{n}.log",
                       timeout=left())
        row = {"step": f"bench --pack {n}", "rc": rc, "wall_s": round(wall, 1)}
        if rc == 0:
            result = json.loads(numbers.read_text())
            row |= {"device": result["device"], "workers": result["workers"],
                    "solo_model_steps_s": round(result["solo"], 1),
                    "packed_model_steps_s": round(result["packed"], 1), "ratio": round(result["ratio"], 3)}
            if "packed_graph" in result:  # the pack's step as a CUDA graph (packed/graph.py)
                row |= {"graph_model_steps_s": round(result["packed_graph"], 1),
                        "ratio_graph": round(result["ratio_graph"], 3)}
        else:
            row["tail"] = (out / f"bench_pack{n}.log").read_text().strip().splitlines()[-10:]
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
