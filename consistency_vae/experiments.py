"""The reproduction's runs: what to train, and training them as `consistency-vae fit` subprocesses.

A run is one (dataset, setting, alpha or kl_target, seed). Its folder is
``RUNS_DIR/<name>/version_0``, and a finished run leaves ``DONE`` there, so an interrupted
reproduction picks up where it stopped: finished runs are skipped, unfinished ones resume from
their ``last.ckpt``.
"""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {  # name -> (extra CLI flags, what it is)
    "paper": ([], "784-400-2 MLP, the paper's 2-D latent"),
    "d20": (["--model.latent_dim=20"], "784-400-20 MLP, a 20-D latent"),
}
DATASET_OVERLAY = {"mnist": [], "fashion_mnist": ["--config", str(ROOT / "configs/fashion_mnist.yaml")]}


@dataclass(frozen=True)
class Run:
    dataset: str
    setting: str
    seed: int
    alpha: float = 0.0
    kl_target: float | None = None  # set: constrained mode, alpha adapted from its initial value

    @property
    def name(self) -> str:
        how = f"target{self.kl_target:g}" if self.kl_target is not None else f"alpha{self.alpha:g}"
        return f"{self.dataset}_{self.setting}_{how}_seed{self.seed}"

    @property
    def model(self) -> str:
        if self.kl_target is not None:
            return "constrained"
        return "vae" if self.alpha == 0 else "consistency" if self.alpha == 1 else f"alpha{self.alpha:g}"

    def fit_args(self, runs_dir: Path, epochs: int, subset: int | None, data_dir: str) -> list[str]:
        logger = [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                   "init_args": {"save_dir": str(runs_dir), "name": self.name, "version": 0}}]
        args = ["--config", str(ROOT / "configs/mnist.yaml"), *DATASET_OVERLAY[self.dataset],
                *SETTINGS[self.setting][0], f"--seed_everything={self.seed}",
                f"--model.alpha={self.alpha}", f"--trainer.max_epochs={epochs}",
                "--trainer.enable_progress_bar=false", f"--trainer.logger={json.dumps(logger)}",
                f"--data.data_dir={data_dir}", "--trainer.callbacks+=consistency_vae.timing.EpochTimer"]
        if self.kl_target is not None:
            args += ["--model.alpha_mode=constrained", f"--model.kl_target={self.kl_target}"]
        if subset:
            args += [f"--data.subset={subset}"]
        return args


def run_dir(runs_dir: Path, run: Run) -> Path:
    return runs_dir / run.name / "version_0"


def train_one(run: Run, runs_dir: Path, epochs: int, subset: int | None, data_dir: str,
              threads: int) -> tuple[Run, str]:
    """Train (or resume) one run in a subprocess; returns (run, status)."""
    folder = run_dir(runs_dir, run)
    if (folder / "DONE").is_file():
        return run, "done before"
    cmd = [sys.executable, "-m", "consistency_vae", "fit", *run.fit_args(runs_dir, epochs, subset, data_dir)]
    last = folder / "checkpoints" / "last.ckpt"
    if last.is_file():
        cmd += ["--ckpt_path", str(last)]  # an interrupted earlier attempt: resume it
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(folder.parent / "train.log", "a") as log:
        code = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if code != 0:
        return run, f"FAILED (exit {code}, see {folder.parent / 'train.log'})"
    (folder / "DONE").write_text(json.dumps({**asdict(run), "epochs": epochs, "subset": subset,
                                             "wall_s": time.perf_counter() - start}))
    return run, f"trained in {time.perf_counter() - start:.0f} s"


def train_all(runs: list[Run], runs_dir: Path, epochs: int, subset: int | None, data_dir: str,
              parallel: int) -> list[Run]:
    """Train every run, ``parallel`` at a time, cores split between them; returns the failures."""
    threads = max(1, (os.cpu_count() or 1) // parallel)
    failed, start = [], time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        jobs = [pool.submit(train_one, r, runs_dir, epochs, subset, data_dir, threads) for r in runs]
        for i, job in enumerate(as_completed(jobs), 1):
            run, status = job.result()
            elapsed = time.perf_counter() - start
            print(f"[{i}/{len(runs)}] {run.name}: {status}   ({elapsed / 60:.1f} min elapsed)", flush=True)
            if status.startswith("FAILED"):
                failed.append(run)
    return failed
