"""Reliability, fast: atomic checkpoints, NaN stops, determinism, bad input that loses nothing.

The bad-value messages of alpha, latent_dim, dataset and unknown keys are checked in
test_cli.py; here every bad input is also checked to leave an existing run untouched.
"""

import errno
import hashlib
import io
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning import Callback

from consistency_vae import data_files, run_folders
from consistency_vae.cli import cli_main
from consistency_vae.datamodule import (
    MNISTDataModule,
    UnpaddedDistributedSampler,
)
from consistency_vae.model import ConsistencyVAE
from consistency_vae.networks import LOGVAR_BOUND
from consistency_vae.noise import seeded_generator
from tests.cli_runs import BASE, csv_only, read_test_metrics

RUN = "runs/mnist_alpha1.0_seed0"
# 512 images: 4 training batches of 128 per epoch, one validation and one test batch.
TINY = ["--data.subset=512", "--data.eval_batch_size=512", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false"]
# Only the checkpoint callback: the figure callbacks cost seconds and do not touch training.
CHECKPOINT_ONLY = ["--trainer.callbacks=[]",
                   "--trainer.callbacks+=consistency_vae.checkpointing.AtomicModelCheckpoint",
                   "--trainer.callbacks.init_args.save_last=true",
                   "--trainer.callbacks.init_args.monitor=val/loss"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under root: (sha256, mtime in ns)."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def fail_message(capsys, *args: str) -> str:
    """Run the CLI, expect it to stop with an error, return what the user sees."""
    with pytest.raises(SystemExit) as exit_:
        cli_main(list(args))
    assert exit_.value.code not in (0, None)
    code = exit_.value.code
    return (code if isinstance(code, str) else "") + capsys.readouterr().err


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, data_dir) -> Path:
    """A real, finished one-epoch run: runs/mnist_alpha1.0_seed0/version_0 with its checkpoints."""
    root = tmp_path_factory.mktemp("finished")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        torch.set_num_threads(1)
        cli_main(["fit", "--config", BASE, "--data.data_dir", str(data_dir), *TINY, csv_only(),
                  "--trainer.max_epochs=1", *CHECKPOINT_ONLY])
    torch.set_num_threads(threads)
    return root


@pytest.fixture
def workdir(finished_run, tmp_path, monkeypatch, data_dir) -> list[str]:
    """A copy of the finished run in tmp_path, the working directory; returns the common flags."""
    shutil.copytree(finished_run / "runs", tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    return ["--config", BASE, "--data.data_dir", str(data_dir), *TINY]


# --- bad input: each fails fast, says what to do, and changes no file ------------------------
@pytest.mark.parametrize("command, flags, expected", [
    ("fit", ["--model.alpha=-1"], "model.alpha must be >= 0"),
    ("fit", ["--model.alpha=abc"], "alpha"),
    ("fit", ["--model.alpah=1"], "alpah"),
    ("fit", ["--config", "missing.yaml"], "File does not exist: "),
    ("fit", [csv_only(0)], "version_0 already holds a run (epoch=0-step=4.ckpt, last.ckpt in checkpoints/)"),
    ("test", [csv_only(0)],  # with a --ckpt_path of the run, test writes into version_0/test/ instead
     "version_0 holds the logs of a run (metrics.csv, config.yaml, hparams.yaml), which `test` would"),
], ids=["negative-alpha", "text-alpha", "typo-key", "missing-config", "finished-run", "test-into-run"])
def test_bad_input_fails_fast_and_changes_nothing(workdir, tmp_path, capsys, command, flags, expected):
    before = snapshot(tmp_path / "runs")
    message = fail_message(capsys, command, *workdir, *flags)
    assert expected in message
    assert snapshot(tmp_path / "runs") == before


LIGHTNING = {"pytorch-lightning_version": "2.6.6", "epoch": 0, "global_step": 1}


@pytest.mark.parametrize("damage, expected", [
    (lambda b: b[: len(b) // 2], "is truncated or corrupted"),  # truncated by a kill or a full disk
    (lambda b: b[:1000] + bytes(x ^ 0xFF for x in b[1000:3000]) + b[3000:], "is truncated or corrupted"),
    (lambda b: _torch_bytes({"encoder.weight": torch.zeros(3)}), "is not a Lightning checkpoint"),
    (lambda b: _torch_bytes({**LIGHTNING, "state_dict": {"layer.weight": torch.zeros(2, 32)}}),
     "holds another model than this config builds (alpha missing; "),
    (lambda b: _torch_bytes({**LIGHTNING, "state_dict": {}, "hyper_parameters": {"n_heads": 8}}),
     "holds the hyperparameters of another model"),
], ids=["truncated", "corrupted", "plain-torch-dict", "other-module", "other-module-hparams"])
def test_bad_checkpoint_is_refused_before_any_work(workdir, tmp_path, capsys, damage, expected):
    last = tmp_path / RUN / "version_0/checkpoints/last.ckpt"
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(damage(last.read_bytes()))
    before = snapshot(tmp_path)
    for command in ("fit", "test"):
        message = fail_message(capsys, command, *workdir, f"--ckpt_path={bad}")
        assert expected in message and str(bad) in message and "\n" not in message.strip()
    assert snapshot(tmp_path) == before  # no new run folder either


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_corrupted_data_file_is_named_with_its_fix(workdir, tmp_path, capsys, data_dir):
    shutil.copytree(data_dir / "MNIST", tmp_path / "data/MNIST")
    bad = tmp_path / "data/MNIST/raw/t10k-images-idx3-ubyte"
    raw = bad.read_bytes()
    bad.write_bytes(raw[:5000] + bytes(x ^ 0xFF for x in raw[5000:5100]) + raw[5100:])
    before = snapshot(tmp_path)
    message = fail_message(capsys, "fit", *workdir, "--data.data_dir=data")
    assert "file corrupted: data/MNIST/raw/t10k-images-idx3-ubyte" in message
    assert "consistency-vae data --dataset mnist" in message
    after = snapshot(tmp_path)
    # the bad file is kept as it was; only the md5 record of the files that did verify may change
    # (data_files.VERIFIED: the copies have new mtimes, so they were hashed again)
    unchanged = {k: v for k, v in after.items() if k in before and not k.endswith(data_files.VERIFIED)}
    assert unchanged == {k: v for k, v in before.items() if not k.endswith(data_files.VERIFIED)}
    assert bad.name not in (bad.parent / data_files.VERIFIED).read_text()  # never recorded as verified
    assert not [k for k in after if k.endswith(".ckpt") and k not in before]


@pytest.mark.parametrize("error", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_unwritable_or_full_output_folder_fails_before_training(workdir, tmp_path, capsys, monkeypatch,
                                                               error):
    real_open = open

    def refusing_open(path, mode="r", *args, **kwargs):
        if "w" in mode and ".write-probe" in str(path):
            raise OSError(error, {errno.ENOSPC: "No space left on device"}.get(error, "Read-only"))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing_open)
    before = snapshot(tmp_path / "runs")
    message = fail_message(capsys, "fit", *workdir)
    assert "output folder runs" in message and "--trainer.default_root_dir=DIR" in message
    assert ("is full" if error == errno.ENOSPC else "cannot be written") in message
    assert snapshot(tmp_path / "runs") == before


def test_nearly_full_disk_fails_before_training(workdir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run_folders.shutil, "disk_usage", lambda _: SimpleNamespace(free=2**20))
    message = fail_message(capsys, "fit", *workdir)
    assert "has 1.0 MiB free, but the checkpoints of this run need about" in message


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes through chmod; the EROFS/EACCES test above simulates it")
def test_read_only_output_folder_by_permissions(workdir, tmp_path, capsys):
    (tmp_path / "runs").chmod(0o555)
    try:
        assert "cannot be written (Permission denied)" in fail_message(capsys, "fit", *workdir)
    finally:
        (tmp_path / "runs").chmod(0o755)


# --- resume bookkeeping -----------------------------------------------------------------------
def test_ckpt_path_last_picks_the_newest_version_with_a_last_checkpoint(tmp_path):
    for version, has_last in [(0, True), (2, True), (10, True), (11, False)]:
        folder = tmp_path / "run" / f"version_{version}" / "checkpoints"
        folder.mkdir(parents=True)
        if has_last:
            (folder / "last.ckpt").write_bytes(b"x")
    assert run_folders.latest_resumable(str(tmp_path), "run") == 10  # numeric order, 11 has none
    with pytest.raises(run_folders.CheckpointError, match="no run in .*other/version_\\* has a"):
        run_folders.latest_resumable(str(tmp_path), "other")


def test_ckpt_path_last_without_any_run_says_so(workdir, capsys):
    message = fail_message(capsys, "fit", *workdir, "--ckpt_path=last", "--model.alpha=2")
    assert ("--ckpt_path last: no run in runs/mnist_alpha2.0_seed0/version_* has a checkpoints/last.ckpt"
            in message)


def test_previous_attempt_logs_are_kept_not_overwritten(tmp_path):
    for name in ("metrics.csv", "config.yaml", "metrics.attempt1.csv"):
        (tmp_path / name).write_text(name)
    kept = run_folders.keep_previous_attempt(tmp_path)
    assert sorted(p.name for p in kept) == ["config.attempt2.yaml", "metrics.attempt2.csv"]
    assert (tmp_path / "metrics.attempt2.csv").read_text() == "metrics.csv"
    assert (tmp_path / "metrics.attempt1.csv").read_text() == "metrics.attempt1.csv"
    assert not (tmp_path / "metrics.csv").exists() and not (tmp_path / "config.yaml").exists()


def weights_are_finite(path: Path) -> bool:
    state = torch.load(path, weights_only=True)["state_dict"]
    return all(v.isfinite().all() for k, v in state.items() if k.endswith(("weight", "bias")))


class PoisonWeights(Callback):
    """Set one weight to NaN after the optimizer step that reaches ``at_step``."""

    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            with torch.no_grad():
                pl_module.encoder.net[0].weight[0, 0] = float("nan")


@pytest.mark.parametrize("at_step", [6, 8], ids=["mid-epoch", "last-batch-before-validation"])
def test_nan_stops_the_run_naming_step_and_terms_and_keeps_good_checkpoints(workdir, tmp_path, capsys,
                                                                            at_step):
    message = fail_message(capsys, "fit", *workdir, "--trainer.max_epochs=4", csv_only(), *CHECKPOINT_ONLY,
                           "--trainer.callbacks+=tests.test_reliability.PoisonWeights",
                           f"--trainer.callbacks.init_args.at_step={at_step}")
    if at_step == 8:  # poisoned at an epoch's end: the end-of-epoch checkpoint refuses the weights first
        assert ("non-finite weights at epoch 1, global step 8 in encoder.net.0.weight: not writing a "
                "checkpoint") in message
    else:
        expected = f"non-finite loss at epoch {at_step // 4}, global step {at_step}: loss=nan, recon=nan"
        assert expected in message
        assert "kl_consistency=" in message
    assert "Lower model.lr" in message
    ckpts = list((tmp_path / RUN / "version_1/checkpoints").glob("*.ckpt"))
    assert ckpts and all(weights_are_finite(c) for c in ckpts)
    last = torch.load(tmp_path / RUN / "version_1/checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 4  # the end of epoch 0, the last good state


# --- determinism and numerical range ------------------------------------------------------------
def test_same_seed_twice_gives_identical_weights_and_metrics(workdir, tmp_path):
    for _ in range(2):
        cli_main(["fit", *workdir, csv_only(), "--trainer.max_epochs=1", *CHECKPOINT_ONLY])
    a, b = (torch.load(tmp_path / RUN / f"version_{v}/checkpoints/last.ckpt", weights_only=True)
            for v in (1, 2))
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(value, b["state_dict"][key], rtol=0, atol=0, equal_nan=True)
    tests = [read_test_metrics(tmp_path / RUN / f"version_{v}/metrics.csv") for v in (1, 2)]
    assert tests[0] == tests[1] and set(tests[0]) >= {"test/elbo", "test/kl_consistency"}


def test_shuffle_and_noise_follow_seed_and_epoch_only(data_dir, monkeypatch):
    dm = MNISTDataModule(data_dir=str(data_dir), subset=512)
    dm.setup()

    def order(seed: int, epoch: int) -> list[int]:
        monkeypatch.setenv("PL_GLOBAL_SEED", str(seed))
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        torch.manual_seed(1234 + epoch)  # the global RNG must not matter
        return list(loader.sampler)

    assert order(0, 1) == order(0, 1) != order(0, 2)
    assert order(0, 1) != order(1, 1) and sorted(order(0, 1)) == list(range(512))
    cpu = torch.device("cpu")
    draw = [torch.randn(4, generator=seeded_generator(cpu, *k)) for k in [(0, 5), (0, 5), (0, 6)]]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])


def test_evaluation_batches_are_dealt_whole_without_padding():
    n, batch, world = 1103, 100, 2  # 12 batches, the last one partial: not divisible by 2 * 100
    shards = [list(UnpaddedDistributedSampler(range(n), world, rank, batch)) for rank in range(world)]
    assert sorted(shards[0] + shards[1]) == list(range(n))  # each image once, nothing padded
    for rank, shard in enumerate(shards):
        for i in range(0, len(shard), batch):  # local batch i is global batch i * world + rank
            b = (i // batch) * world + rank
            assert shard[i:i + batch] == list(range(b * batch, min((b + 1) * batch, n)))


def test_log_variance_is_bounded_for_any_input():
    torch.manual_seed(0)
    model = ConsistencyVAE(latent_dim=2)
    x = torch.rand(8, 1, 28, 28) * 1e6  # far outside [0, 1]
    mu, logvar = model.encode(x)
    assert logvar.abs().max() <= LOGVAR_BOUND and logvar.exp().isfinite().all()
    assert logvar.abs().max() > LOGVAR_BOUND - 1  # the input does push it to the bound
    out = model(x.clamp(0, 1))
    assert all(out[t].isfinite().all() for t in ("loss", "recon", "kl", "kl_consistency"))
