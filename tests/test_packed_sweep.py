"""`consistency-vae sweep --pack N`: grid points trained as one pack in one process, each into an
ordinary run folder and sweep record, as its solo run would be.

The runs are real: the sweep runner launches ``python -m consistency_vae.packed.run`` over 512
images (4 steps an epoch). A member's folder is compared with the solo run of the same grid point
(``--pack 1``, the same runner), its checkpoint is loaded, a member that goes non-finite fails
alone, and a pack whose runner is SIGKILLed resumes as a pack and ends where an unbroken one does.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from consistency_vae.model import ConsistencyVAE
from consistency_vae.run_record import merged_rows, read_status
from consistency_vae.sweep import packs
from consistency_vae.sweep.runner import GridQueue, run_sweep
from consistency_vae.sweep.store import SweepStore
from consistency_vae.sweep.sweep_file import grid_points, select
from tests.conftest import ROOT
from tests.float32 import approx_f32

SUBSET = 512


def sweep_file(tmp: Path, data_dir: Path, alphas: list[float], seeds: list[int], epochs: int = 2,
               name: str = "packed", subset: int = SUBSET) -> str:
    config = {
        "name": name, "method": "grid", "metric": {"name": "val/elbo", "goal": "maximize"},
        "parameters": {"model.alpha": {"values": alphas}, "seed_everything": {"values": seeds},
                       "trainer.max_epochs": {"value": epochs}},
        "program": "consistency_vae",
        "command": ["${env}", "${interpreter}", "-m", "${program}", "fit", "--config",
                    str(ROOT / "configs/mnist.yaml"), f"--data.data_dir={data_dir}",
                    f"--data.subset={subset}", "--trainer.callbacks+=consistency_vae.timing.EpochTimer",
                    "--trainer.enable_progress_bar=false", "${args}"],
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


def records(runs_dir: Path, name: str = "packed") -> list[dict]:
    store_dir = runs_dir / f"sweep-{name}"
    return [json.loads(p.read_text()) for p in sorted((store_dir / "attempts").glob("*.json"))]


def final_test(folder: str) -> dict[str, float]:
    row = next(r for r in reversed(merged_rows(Path(folder))) if "test/loss" in r)
    return {k: float(v) for k, v in row.items() if k.startswith("test/")}


# --- which points pack together ------------------------------------------------------------------
def test_points_pack_by_everything_but_the_per_member_values(tmp_path):
    config = {"name": "g", "method": "grid", "metric": {"name": "val/elbo", "goal": "maximize"},
              "parameters": {"model.latent_dim": {"values": [2, 20]}, "model.alpha": {"values": [0.0, 1.0]},
                             "seed_everything": {"values": [0, 1]}},
              "command": ["${args}"]}
    store = SweepStore(tmp_path / "sweep-g", "g.yaml", config)
    queue = GridQueue(store, select(grid_points(config), None), [])
    first = queue.next()
    pack = queue.next_in_pack(first, 8)
    assert len(pack) == 4 and {p[1]["model.latent_dim"] for p in pack} == {first[1]["model.latent_dim"]}
    second = queue.next_in_pack(queue.next(), 3)  # the other latent size, at most 3
    assert len(second) == 3 and {p[1]["model.latent_dim"] for p in second} != {first[1]["model.latent_dim"]}
    assert len(queue.todo) == 1  # the fourth of the other latent size: left for the next pack


@pytest.mark.parametrize("bad", ["0", "-2", "many"])
def test_a_bad_pack_size_is_refused_naming_it(bad):
    with pytest.raises(Exception, match=f"--pack {bad}: give a number"):
        packs.resolve(bad)


def test_auto_stays_solo_on_a_cpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU: auto packs")
    assert packs.resolve("auto") == 1


# --- a real pack -------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_packed_sweep_writes_ordinary_run_folders_as_its_solo_runs(tmp_path, data_dir, env, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # each member its own W&B run, in one process
    file = sweep_file(tmp_path, data_dir, alphas=[0.0, 3.0], seeds=[0, 1])
    result = run_sweep(file, pack=4, runs_dir=str(tmp_path / "packed"))
    assert result["finished"] == 4 and result["failed"] == 0
    runs = records(tmp_path / "packed")
    assert len({r["pack"] for r in runs}) == 1 and all(r["status"] == "finished" for r in runs)
    for run in runs:
        folder = Path(run["run_dir"])
        assert read_status(folder)["status"] == "finished"
        files = {p.name for p in folder.iterdir()}
        assert {"config.yaml", "hparams.yaml", "metrics.csv", "metrics.merged.csv"} <= files
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["model"]["alpha"] == run["params"]["model.alpha"]  # it retrains the member solo
        assert config["seed_everything"] == run["params"]["seed_everything"]
        ckpts = sorted(p.name for p in (folder / "checkpoints").iterdir())
        assert "last.ckpt" in ckpts and any(n.startswith("best-epoch") for n in ckpts), ckpts
        model = ConsistencyVAE.load_from_checkpoint(folder / "checkpoints/last.ckpt", map_location="cpu")
        assert float(model.alpha) == run["params"]["model.alpha"]
        assert run["history"] and "val/elbo" in run["history"][-1]  # the runner read its metrics
    for run in runs:  # EpochTimer's column: each member's share of the pack's training time
        rows = [r for r in merged_rows(Path(run["run_dir"])) if "time/train_epoch_s" in r]
        assert len(rows) == 2
        for row in rows:
            share = float(row["time/pack_train_epoch_s"]) / 4
            assert float(row["time/train_epoch_s"]) == pytest.approx(share)
    wandb_dirs = {r["wandb_run_dir"] for r in runs}
    assert len(wandb_dirs) == 4 and all(Path(d).is_dir() for d in wandb_dirs), wandb_dirs
    ids = {(Path(r["run_dir"]) / "wandb_id").read_text().strip() for r in runs}
    assert len(ids) == 4 and all(any(i in d for d in wandb_dirs) for i in ids)  # the folder's id is its run's
    for d in wandb_dirs:  # each run was closed with its epochs' history in it
        assert list(Path(d).glob("run-*.wandb")), d
    # `evaluate` reads a member's best checkpoint, and reports for it what the final test logged
    from consistency_vae.evaluation.evaluate import evaluate_checkpoint

    member = runs[0]
    best = next((Path(member["run_dir"]) / "checkpoints").glob("best-epoch*.ckpt"))
    evaluated = evaluate_checkpoint(best, tmp_path / "eval", iwae_k=2, iwae_images=8, figures=False,
                                    progress=False, device="cpu", quadrature_points=101)  # log p(x): unread
    for key in ("kl_consistency", "elbo"):
        assert evaluated[key] == approx_f32(final_test(member["run_dir"])[f"test/{key}"], latent_dim=2), key
    # the solo run of one grid point, by the same runner
    solo = run_sweep(file, pack=1, runs_dir=str(tmp_path / "solo"),
                     only={"model.alpha": [3.0], "seed_everything": [1]})
    assert solo["finished"] == 1
    solo_run = records(tmp_path / "solo")[0]
    member = next(r for r in runs if r["params"] == solo_run["params"])
    # 8 Adam steps in another summation order (tests/test_packed.py: 5e-7 after 4 steps)
    expected = final_test(solo_run["run_dir"])
    got = final_test(member["run_dir"])
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == approx_f32(value, latent_dim=2), key
    # the same files as the solo run: figures (training curves among them) and the rest
    for sub in (".", "figures", "checkpoints"):
        assert names(member["run_dir"], sub) == names(solo_run["run_dir"], sub), sub


def names(folder: str, sub: str) -> set[str]:
    return {p.name for p in (Path(folder) / sub).iterdir()}


@pytest.mark.slow
def test_a_setting_a_pack_would_drop_fails_its_members_before_any_training(tmp_path, data_dir, env, capsys):
    """packable.py's refusal, reached as a user reaches it: a flag of the sweep's command."""
    file = sweep_file(tmp_path, data_dir, alphas=[0.0, 3.0], seeds=[0], epochs=1)
    result = run_sweep(file, pack=2, runs_dir=str(tmp_path / "runs"),
                       extra_args=["--trainer.gradient_clip_val=1"])
    assert result["failed"] == 2 and result["finished"] == 0
    out = capsys.readouterr().out
    assert ("consistency-vae pack: error: trainer.gradient_clip_val=1.0: a pack would drop it and train as "
            "with Lightning's default (None): train this run alone (--pack 1)") in out
    assert not list((tmp_path / "runs").glob("*/version_*/checkpoints/*.ckpt"))  # nothing trained


@pytest.mark.slow
def test_a_point_alone_under_pack_trains_as_a_pack_of_one(tmp_path, data_dir, env):
    """--index I (a SLURM array task) with --pack: the point has no other to pack with, and still
    goes through the packed engine (on a GPU: its step captured as a CUDA graph), not Lightning's fit."""
    file = sweep_file(tmp_path, data_dir, alphas=[0.0, 3.0], seeds=[0], epochs=1)
    result = run_sweep(file, pack=4, index=1, runs_dir=str(tmp_path / "runs"))
    assert result["finished"] == 1
    [run] = records(tmp_path / "runs")
    assert run["params"]["model.alpha"] == 3.0 and run["status"] == "finished"
    assert run["pack"] == run["id"] and run["log"].endswith(f"logs/pack-{run['id']}.log")
    assert (Path(run["run_dir"]) / "checkpoints/last.ckpt").is_file()
    assert "test/elbo" in final_test(run["run_dir"])


@pytest.mark.slow
def test_a_member_that_goes_non_finite_fails_alone(tmp_path, data_dir, env):
    """alpha = 1e39 is inf in float32: that member's loss is inf at its first step."""
    file = sweep_file(tmp_path, data_dir, alphas=[3.0, 1e39], seeds=[0], epochs=1)
    result = run_sweep(file, pack=2, runs_dir=str(tmp_path / "runs"))
    assert result["finished"] == 1 and result["failed"] == 1
    by_alpha = {r["params"]["model.alpha"]: r for r in records(tmp_path / "runs")}
    assert by_alpha[3.0]["status"] == "finished"
    assert by_alpha[1e39]["status"] == "failed"
    assert "non-finite loss at epoch 0, global step 0" in by_alpha[1e39]["failed"]
    assert read_status(Path(by_alpha[1e39]["run_dir"]))["status"] == "failed"


def last_weights(run: dict) -> dict[str, torch.Tensor]:
    return torch.load(Path(run["run_dir"]) / "checkpoints/last.ckpt", map_location="cpu",
                      weights_only=False)["state_dict"]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG: Linux")
def test_a_sigkilled_pack_resumes_as_a_pack_and_ends_where_an_unbroken_one_does(tmp_path, data_dir, env):
    # 5,000 images: 39 steps an epoch, a second or two, so that the runner is killed mid-run
    file = sweep_file(tmp_path, data_dir, alphas=[0.0, 3.0], seeds=[1], epochs=3, subset=5000)
    unbroken = run_sweep(file, pack=2, runs_dir=str(tmp_path / "unbroken"))
    assert unbroken["finished"] == 2
    runs_dir = tmp_path / "killed"
    runner = subprocess.Popen([sys.executable, "-m", "consistency_vae", "sweep", file, "--pack", "2",
                               "--runs_dir", str(runs_dir)], cwd=ROOT, env=dict(os.environ),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:  # until both members have finished epoch 1 (0-based 0)
            lasts = list(runs_dir.glob("*/version_*/checkpoints/last.ckpt"))
            if len(lasts) == 2:
                break
            time.sleep(0.05)
        assert len(lasts) == 2, "the pack wrote no checkpoints in time"
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=30)
    deadline = time.time() + 60  # the pack gets SIGTERM from the kernel (PR_SET_PDEATHSIG)
    running = [r for r in records(runs_dir) if r["status"] == "running"]
    while time.time() < deadline and any(_child_alive(r) for r in running):
        time.sleep(0.2)
    resumed = run_sweep(file, pack=2, runs_dir=str(runs_dir))
    assert resumed["finished"] == 2
    finished = [r for r in records(runs_dir) if r["status"] == "finished"]
    assert all(r.get("resumes") for r in finished)  # resumed, not started over
    for run in finished:
        reference = next(r for r in records(tmp_path / "unbroken") if r["params"] == run["params"])
        for name, value in last_weights(reference).items():  # same computation, same machine: exact
            torch.testing.assert_close(last_weights(run)[name], value, rtol=0, atol=0, equal_nan=True)


def _child_alive(record: dict) -> bool:
    pid = (record.get("runner") or {}).get("child", {}).get("pid")
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG: Linux")
def test_a_point_that_resumes_alone_under_pack_resumes_in_a_solo_fit(tmp_path, data_dir, env, capsys):
    """A solo run cut off by SIGTERM saves a checkpoint mid-epoch, which a pack cannot resume
    (restore.resume_epoch): rerun under --pack, the point resumes alone as a solo fit, not as a
    pack of one, and finishes."""
    file = sweep_file(tmp_path, data_dir, alphas=[0.0, 3.0], seeds=[1], epochs=3, subset=5000)
    runs_dir = tmp_path / "runs"
    runner = subprocess.Popen([sys.executable, "-m", "consistency_vae", "sweep", file, "--index", "1",
                               "--runs_dir", str(runs_dir)], cwd=ROOT, env=dict(os.environ),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not list(runs_dir.glob("*/version_*/checkpoints/last.ckpt")):
            time.sleep(0.05)
    finally:
        runner.send_signal(signal.SIGKILL)  # its fit gets SIGTERM (PR_SET_PDEATHSIG): a mid-epoch save
        runner.wait(timeout=30)
    [cut] = records(runs_dir)
    deadline = time.time() + 60
    while time.time() < deadline and _child_alive(cut):
        time.sleep(0.2)
    resumed = run_sweep(file, pack=4, index=1, runs_dir=str(runs_dir))
    assert resumed["finished"] == 1, capsys.readouterr().out
    last = records(runs_dir)[-1]
    assert last["resumes"] == cut["id"] and "pack" not in last and last["status"] == "finished"
    assert "in pack" not in capsys.readouterr().out
