"""The reproduction's evaluators: each run's last.ckpt into its folder's eval/metrics.json, one at a
time in this process (``reproduce --eval_parallel 1``) or by P worker processes at once.

Whoever evaluates a run, this process, a worker or another reproduction on the same runs, first
claims the run's ``eval.claim`` (sweep/claims.py), so no run is evaluated twice at once; a run
whose metrics.json is there is read, not evaluated again. ``evaluate_checkpoint`` writes
metrics.json last, whole, so an evaluation cut off leaves none and is done again next time, under
a claim that is then stale (its process is gone).

Workers are started with "spawn" (CUDA cannot be forked), apply the thread rule (threads.py) once,
and each task is one run, evaluated by the same call with the same arguments as in this process: the
same numbers. No worker outlives this process: an error or Ctrl-C here (which the workers ignore)
ends them at once, their runs cut off (``Evaluators.__exit__``); and on Linux a worker gets SIGTERM
when this process dies, by a SIGTERM or SIGKILL that no handler sees.
"""

import ctypes
import json
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from consistency_vae import threads
from consistency_vae.evaluation.evaluate_args import QUADRATURE_POINTS
from consistency_vae.reproduction.runs import Run
from consistency_vae.sweep import children, claims


@dataclass(frozen=True)
class Settings:
    """What every evaluation of the reproduction is given (its command's flags)."""
    iwae_k: int
    iwae_images: int | None
    data_dir: str
    gap_images: int
    quadrature_points: int = QUADRATURE_POINTS  # n of log p(x)'s n x n grid (2-D latents)


def metrics_file(run: Run) -> Path:
    return run.folder / "eval" / "metrics.json"


def evaluate_run(run: Run, settings: Settings) -> dict | None:
    """``run``'s metrics: read from its metrics.json if there, else computed here under its
    eval.claim (every default metric and the inference gaps); None while another evaluator holds
    the claim."""
    out, claim = run.folder / "eval", run.folder / "eval.claim"
    if not metrics_file(run).is_file() and not claims.claim(claim):
        return None
    try:
        if metrics_file(run).is_file():  # kept from an earlier (or another) reproduce
            return json.loads(metrics_file(run).read_text())
        from consistency_vae.evaluation.evaluate import (
            evaluate_checkpoint,  # torch and Lightning: only to evaluate
        )

        figures = run.setting == "paper" and run.model in ("vae", "consistency") and run.seed == 0
        return evaluate_checkpoint(run.folder / "checkpoints/last.ckpt", out, iwae_k=settings.iwae_k,
                                   iwae_images=settings.iwae_images, data_dir=settings.data_dir,
                                   figures=figures, progress=False, metrics=["inference_gaps"],
                                   gap_images=settings.gap_images,
                                   quadrature_points=settings.quadrature_points)
    finally:
        claims.release(claim)


def _start_worker(parent: int, requested_threads: int | None) -> None:
    """A worker's first acts: leave Ctrl-C to its parent, which stops it (a worker interrupted on
    its own would go on with the next run), die with its parent (Linux), apply the thread rule."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(children.PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the call above
            os.kill(os.getpid(), signal.SIGTERM)
    threads.apply(requested_threads)


class Evaluators:
    """Evaluates runs here, one after another (``parallel`` 1), or in ``parallel`` worker processes,
    started when a run first needs one. Use it as a context manager: it ends the workers on the way
    out; on an error or Ctrl-C at once, dropping the queued runs and cutting off those under way
    (they leave no metrics.json, and a claim that is stale once its worker is gone)."""

    def __init__(self, parallel: int, requested_threads: int | None = None):
        self.parallel, self.requested_threads = parallel, requested_threads
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "Evaluators":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if self._pool is None:
            return
        if kind is None:  # every run done: the workers are idle
            self._pool.shutdown(wait=True)
            return
        # Waiting for the runs under way would take up to a run's time, and more: a worker takes
        # the next run queued for it (cancel_futures drops only the others), and a second Ctrl-C
        # in that wait left the exit hanging on workers that never got the word to stop.
        with children.uninterrupted():  # the stop itself is quick: not to be cut short
            for process in list(self._pool._processes.values()):  # Python >= 3.14: terminate_workers()
                process.terminate()
            self._pool.shutdown(wait=True, cancel_futures=True)

    def completed(self, runs: list[Run], settings: Settings) -> Iterator[tuple[Run, dict | None]]:
        """(run, its metrics, or None while another evaluator holds it) for each of ``runs``, as each
        is done; a worker's error is raised here, as it would be in this process."""
        if self.parallel == 1:
            for run in runs:
                yield run, evaluate_run(run, settings)
            return
        todo = []
        for run in runs:  # a kept metrics.json is read here: a rerun starts no worker
            if metrics_file(run).is_file():
                yield run, evaluate_run(run, settings)
            else:
                todo.append(run)
        futures: dict[Future, Run] = {self._workers().submit(evaluate_run, run, settings): run
                                      for run in todo}
        for future in as_completed(futures):
            yield futures[future], future.result()

    def _workers(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.parallel, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start_worker,
                                             initargs=(os.getpid(), self.requested_threads))
        return self._pool
