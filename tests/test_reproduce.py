"""`make reproduce`: the reproduction's sweeps on a tiny subset, its summary against the runs' own
files, a rerun that trains nothing, the same results from gathered run folders (--from-runs), the
refusal to evaluate a run before its last epoch, and evaluation by worker processes
(--eval_parallel) that gives the same numbers and shares the runs through their claims."""

import json
import math
import multiprocessing
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image as mpimg
import pytest
import torch
import yaml

from consistency_vae import run_record
from consistency_vae.errors import CheckpointError, UserError
from consistency_vae.reproduction import reproduce
from consistency_vae.reproduction.runs import LAST, Run, check_last_epochs, from_folders
from consistency_vae.reproduction.summary import evaluated_epoch
from consistency_vae.sweep import claims
from tests.cli_runs import ENV
from tests.conftest import ROOT
from tests.reproduce_quick import GRID, evaluated, summary_of  # the quick fixture: conftest.py


@pytest.mark.slow
def test_quick_reproduce_writes_every_result_file(quick):
    results = quick["root"] / "results"
    for name in ("kl_during_training", "kl_after_training", "latent_drift_mnist", "alpha_tradeoff",
                 "front", "gaps", "representation"):
        image = mpimg.imread(results / f"{name}.png")
        assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0.01  # a real picture
    assert "# Reproduction" in (results / "summary.md").read_text()
    assert "learning rate cosine" in (results / "summary.md").read_text()  # as the sweep files train
    assert summary_of(results)["config"]["lr_schedule"] == "cosine"
    runs = summary_of(results)["runs"]
    assert sorted(r["name"] for r in runs) == sorted(
        [f"mnist_alpha{a}_seed{s}" for a in (0.0, 1.0, 3.0) for s in (0, 1)]
        + [f"mnist_constrained_kl1.0_alpha1.0_seed{s}" for s in (0, 1)])
    assert {r["evaluated_epoch"] for r in runs} == {1}  # 2 epochs: the last is epoch 1


@pytest.mark.slow
def test_the_quadrature_grid_reaches_every_evaluation_and_the_summary(quick):
    results = quick["root"] / "results"
    assert summary_of(results)["config"]["quadrature_points"] == GRID
    assert f"log p(x) by quadrature on a {GRID} x {GRID} grid" in (results / "summary.md").read_text()
    for run in summary_of(results)["runs"]:
        metrics = evaluated(run)
        assert metrics["quadrature_settings"]["points"] == GRID  # log_likelihood's grid
        assert metrics["quadrature_settings"]["spacing"] == pytest.approx(0.1)
        assert metrics["inference_gaps_settings"]["quadrature_points"] == GRID  # and the gaps'
        assert math.isfinite(metrics["log_likelihood"]) and math.isfinite(metrics["approximation_gap"])


@pytest.mark.slow
def test_summary_numbers_match_the_metrics_files(quick):
    summary = summary_of(quick["root"] / "results")
    c = summary["results"]["mnist"]["paper"]
    by_name = {r["name"]: r for r in summary["runs"]}
    vae = [evaluated(by_name[f"mnist_alpha0.0_seed{s}"]) for s in (0, 1)]
    ours = [evaluated(by_name[f"mnist_alpha1.0_seed{s}"]) for s in (0, 1)]
    for model, runs in (("vae", vae), ("consistency", ours)):
        for m in ("kl_consistency", "elbo", "iwae_ll", "probe_accuracy"):
            values = [r[m] for r in runs]
            assert c[model][m]["mean"] == pytest.approx(statistics.mean(values))
            assert c[model][m]["std"] == pytest.approx(statistics.stdev(values))
    ratios = [v["kl_consistency"] / o["kl_consistency"] for v, o in zip(vae, ours, strict=True)]
    assert c["kl_ratio"]["mean"] == pytest.approx(statistics.mean(ratios))
    md = (quick["root"] / "results/summary.md").read_text()
    assert f"{c['kl_ratio']['mean']:.2f} ± {c['kl_ratio']['std']:.2f}" in md
    assert summary["config"]["epochs"] == 2 and summary["config"]["subset"] == 1000
    # the per-epoch curve (Fig. 3a) has one test KL per training epoch, from the run's own log
    run = by_name["mnist_alpha0.0_seed0"]
    logged = [float(row["test/kl_consistency"]) for row in run_record.merged_rows(Path(run["folder"]))
              if "test/kl_consistency" in row and int(float(row["epoch"])) < 2]
    assert len(run["curve"]) == 2 and all(math.isfinite(v) for v in run["curve"])
    assert run["curve"] == logged[:2]


@pytest.mark.slow
def test_rerun_trains_nothing_and_keeps_the_evaluations(quick, capsys):
    runs = summary_of(quick["root"] / "results")["runs"]
    before = {r["name"]: (Path(r["folder"]) / "eval/metrics.json").stat().st_mtime for r in runs}
    argv = quick["argv"].copy()
    argv[argv.index("--output") + 1] = str(quick["root"] / "results2")
    reproduce.main(argv)
    assert "reproduce: 0 runs to train" in capsys.readouterr().out
    assert {r["name"]: (Path(r["folder"]) / "eval/metrics.json").stat().st_mtime for r in runs} == before


@pytest.mark.slow
def test_from_runs_builds_the_same_summary_from_gathered_folders(quick):
    out = quick["root"] / "results_gathered"
    reproduce.main(["--from-runs", str(quick["root"] / "runs"), "--output", str(out), "--iwae_k", "5",
                    "--iwae_images", "50"])
    ours, theirs = summary_of(quick["root"] / "results"), summary_of(out)
    assert theirs["results"] == ours["results"] and theirs["constrained"] == ours["constrained"]


def fake_run(folder: Path, max_epochs: int, ckpt_epoch: int | None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "seed_everything": 0, "data": {"dataset": "mnist"}, "trainer": {"max_epochs": max_epochs},
        "model": {"latent_dim": 2, "alpha": 1.0, "alpha_mode": "fixed", "kl_target": 1.0}}))
    if ckpt_epoch is not None:
        (folder / "checkpoints").mkdir()
        torch.save({"epoch": ckpt_epoch}, folder / "checkpoints/last.ckpt")
    return folder


def test_a_run_whose_last_checkpoint_is_not_its_last_epoch_stops_the_reproduction(tmp_path):
    done = Run.from_folder(fake_run(tmp_path / "a/version_0", 25, 24))
    early = Run.from_folder(fake_run(tmp_path / "b/version_0", 25, 19))
    check_last_epochs([done])
    with pytest.raises(UserError, match=r"1 runs would be evaluated before their last epoch "
                                        r"\(.*b/version_0: epoch 19 of 0..24\).*resume them"):
        check_last_epochs([done, early])


def test_a_moved_run_folder_still_knows_the_epoch_it_was_evaluated_at(tmp_path):
    folder = fake_run(tmp_path / "gathered/mnist_alpha1.0_seed0/version_0", 25, 24)
    # metrics.json records where the checkpoint was when evaluate read it: on another machine, or
    # before the folder moved (and a run of the same name may train there now)
    metrics = {"ckpt_path": str(tmp_path / "runs/mnist_alpha1.0_seed0/version_0/checkpoints/last.ckpt")}
    assert evaluated_epoch(folder, metrics) == 24  # the folder's own last.ckpt
    assert evaluated_epoch(folder, {**metrics, "ckpt_epoch": 19}) == 19  # as evaluate recorded it


def test_gathered_folders_count_each_grid_point_once(tmp_path, capsys):
    fake_run(tmp_path / "machine1/runs/mnist_alpha1.0_seed0/version_0", 25, 24)
    newer = fake_run(tmp_path / "machine2/runs/mnist_alpha1.0_seed0/version_0", 25, 24)
    fake_run(tmp_path / "machine2/runs/mnist_alpha1.0_seed0/version_1", 25, None)  # no last.ckpt
    quick_try = fake_run(tmp_path / "machine2/runs/mnist_alpha0.0_seed0/version_0", 1, 0)
    (run,) = from_folders(tmp_path)
    assert run.folder == newer and run.model == "consistency" and run.setting == "paper"
    err = capsys.readouterr().err
    assert "are the same run; using the newer" in err
    assert "using the 1 runs of 25 epochs, subset None; left out: 1 of 1 epochs, subset None" in err
    assert [r.folder for r in from_folders(tmp_path, epochs=1)] == [quick_try]
    with pytest.raises(UserError, match=r"no run of 5 epochs on subset None; the runs there are"):
        from_folders(tmp_path, epochs=5)
    with pytest.raises(UserError, match="no run folder"):
        from_folders(tmp_path / "machine1/runs/mnist_alpha1.0_seed0/version_0/checkpoints")


def test_make_reproduce_passes_the_quick_options():
    # Under `make test` (CI) this make is nested: without the parent's MAKEFLAGS/MAKELEVEL it
    # prints only the recipe, not "make[1]: Entering directory ..."
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    make = ["make", "--no-print-directory", "-n", "-o", "data", "reproduce"]
    dry = subprocess.run([*make, "SEEDS=1", "EPOCHS=5"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=30)
    assert dry.returncode == 0 and "reproduce --seeds 1 --epochs 5" in dry.stdout, dry.stdout + dry.stderr
    full = subprocess.run(make, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert full.stdout.strip().endswith("reproduce")  # the sweep files' own seeds and epochs


def test_a_reproduction_started_twice_waits_for_the_other_runner(tmp_path, monkeypatch, capsys):
    """The second `make reproduce` neither trains nor evaluates what the first one does now: it
    waits for it, then reads its results."""
    from consistency_vae.evaluation import evaluate
    from consistency_vae.sweep.store import SweepStore, run_key

    store = SweepStore(tmp_path / "sweep-x", "x.yaml", {})
    key = run_key({"seed_everything": 0}, [])
    other = json.dumps({"host": "node-elsewhere", "pid": 1})  # fresh: alive as far as we can tell
    store.claim_path(key).write_text(other)
    run = Run.from_folder(fake_run(tmp_path / "mnist_alpha1.0_seed0/version_0", 25, 24))
    (run.folder / "eval.claim").write_text(other)

    def the_other_runner_finishes(seconds):  # what the other runner does while this one sleeps
        if store.state(key)[0] != "finished":
            store.save({**store.new_record({"seed_everything": 0}, key, []), "status": "finished"})
        store.claim_path(key).unlink(missing_ok=True)
        (run.folder / "eval").mkdir(exist_ok=True)
        (run.folder / "eval/metrics.json").write_text(json.dumps({"kl_consistency": 1.0, "elbo": -99.0}))

    monkeypatch.setattr(reproduce.time, "sleep", the_other_runner_finishes)
    monkeypatch.setattr(evaluate, "evaluate_checkpoint", lambda *a, **k: pytest.fail("evaluated twice"))
    reproduce.wait_for_other_runners([(store, {key})])
    assert "waiting for 1 runs that another runner trains now" in capsys.readouterr().out
    assert store.state(key)[0] == "finished"
    (run.folder / "eval/metrics.json").unlink()
    results = reproduce.evaluate_all([run], iwae_k=5, iwae_images=None, data_dir="data")
    assert results[run]["elbo"] == -99.0 and (run.folder / "eval.claim").exists()  # theirs, left alone
    assert "waiting for another runner's evaluation of mnist_alpha1.0_seed0" in capsys.readouterr().out


def test_an_evaluation_held_by_another_runner_is_passed_over_until_the_rest_is_done(tmp_path, monkeypatch):
    """Two reproductions side by side evaluate different runs at once: this one does not wait on
    the first run, which the other holds, but evaluates the second, then reads the first."""
    from consistency_vae.evaluation import evaluate

    held, free = (Run.from_folder(fake_run(tmp_path / f"{n}/version_0", 25, 24)) for n in ("held", "free"))
    (held.folder / "eval.claim").write_text(json.dumps({"host": "node-elsewhere", "pid": 1}))
    events = []

    def evaluate_here(ckpt, out, **kwargs):
        events.append(("evaluate", Path(ckpt).parents[1]))
        return {"kl_consistency": 2.0, "elbo": -98.0}

    def the_other_runner_finishes(seconds):
        events.append(("wait", seconds))
        (held.folder / "eval").mkdir()
        (held.folder / "eval/metrics.json").write_text(json.dumps({"kl_consistency": 1.0, "elbo": -99.0}))

    monkeypatch.setattr(evaluate, "evaluate_checkpoint", evaluate_here)
    monkeypatch.setattr(reproduce.time, "sleep", the_other_runner_finishes)
    results = reproduce.evaluate_all([held, free], iwae_k=5, iwae_images=None, data_dir="data")
    assert events == [("evaluate", free.folder), ("wait", reproduce.WAIT_S)]  # waits once nothing is left
    assert list(results) == [held, free]  # in the runs' order
    assert results[held]["elbo"] == -99.0 and results[free]["elbo"] == -98.0


WHERE = ("ckpt_path", "figures", "wall_seconds", "timings")  # where the checkpoint was and how long it took


@pytest.mark.slow
def test_worker_processes_evaluate_to_the_same_numbers(quick, tmp_path, data_dir):
    """--eval_parallel 2: two runs evaluated again, from copies of their folders, by two spawned
    workers. Exactly the numbers that this process wrote: the same call with the same arguments, on
    the same machine with the same thread count (the threads rule, in the workers too), so every
    float32 sum is added in the same order."""
    runs = [r for r in summary_of(quick["root"] / "results")["runs"] if r["name"].endswith("seed1")][:2]
    copies = []
    for run in runs:
        copy = tmp_path / Path(run["folder"]).parent.name / "version_0"
        shutil.copytree(run["folder"], copy, ignore=shutil.ignore_patterns("eval", "eval.claim"))
        copies.append(Run.from_folder(copy))
    results = reproduce.evaluate_all(copies, iwae_k=5, iwae_images=50, data_dir=str(data_dir), gap_images=10,
                                     parallel=2, quadrature_points=GRID)
    assert list(results) == copies
    for run, copy in zip(runs, copies, strict=True):
        ours, theirs = evaluated(run), json.loads((copy.folder / "eval/metrics.json").read_text())
        assert theirs["ckpt_path"] == str(copy.folder / "checkpoints/last.ckpt")
        assert results[copy] == theirs and not (copy.folder / "eval.claim").exists()
        # json text: a NaN metric (not computed) compares equal to itself, every float exactly
        ours, theirs = ({k: v for k, v in m.items() if k not in WHERE} for m in (ours, theirs))
        assert json.dumps(theirs, sort_keys=True) == json.dumps(ours, sort_keys=True)


def test_workers_pass_over_evaluations_held_by_a_live_process_until_released(tmp_path, monkeypatch):
    """The workers take runs through the eval.claim files, as this process does: two runs held by a
    live process on this host are not evaluated while it holds them. Then the other runner finishes
    one (its metrics.json is read) and dies holding the other, whose stale claim a worker takes over:
    its checkpoint is a fake, and the worker's CheckpointError reaches us as in this process, once
    the workers have ended, with the claim given back and no metrics.json written."""
    done, dropped = (Run.from_folder(fake_run(tmp_path / f"{n}/version_0", 25, 24)) for n in ("a", "b"))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # another reproduce
    held = json.dumps({"host": socket.gethostname(), **claims.process_info(holder.pid),
                       "claimed": time.time()})
    for run in (done, dropped):
        (run.folder / "eval.claim").write_text(held)
    waits = []

    def the_other_runner_finishes_one_and_dies(seconds):
        waits.append(seconds)
        (done.folder / "eval").mkdir()
        (done.folder / "eval/metrics.json").write_text(json.dumps({"kl_consistency": 1.0, "elbo": -99.0}))
        (done.folder / "eval.claim").unlink()
        holder.kill()
        holder.wait()

    monkeypatch.setattr(reproduce.time, "sleep", the_other_runner_finishes_one_and_dies)
    before = set(multiprocessing.active_children())
    try:
        with pytest.raises(CheckpointError, match=re.escape(f"{dropped.folder / LAST} is not a Lightning")):
            reproduce.evaluate_all([done, dropped], iwae_k=5, iwae_images=None, data_dir="data", parallel=2)
    finally:
        holder.kill()
        holder.wait()
    assert waits == [reproduce.WAIT_S]  # a worker that evaluated a held run would have failed before
    assert set(multiprocessing.active_children()) == before  # no worker left
    assert not (dropped.folder / "eval.claim").exists()
    assert not (dropped.folder / "eval/metrics.json").exists()


@pytest.mark.parametrize("flag, says", [
    (["--eval_parallel", "0"], "--eval_parallel 0: give a number of evaluation processes >= 1 (1: one "
                               "checkpoint at a time, in this process)"),
    (["--quadrature_points", "1"], "--quadrature_points 1: give at least 2 grid points per axis (401, the "
                                   "default, has spacing 0.025; 101 has 0.1)"),
], ids=["eval_parallel", "quadrature_points"])
def test_a_bad_evaluation_setting_stops_before_any_run(tmp_path, flag, says):
    """--eval_parallel 0, --quadrature_points 1: one line naming it and the fix, before a run folder
    is written (not after hours of training)."""
    done = subprocess.run([sys.executable, "-m", "consistency_vae", "reproduce", *flag,
                           "--runs_dir", "runs", "--output", "results"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=ENV)  # an error before any work: seconds of imports
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == f"consistency-vae: error: {says}"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
