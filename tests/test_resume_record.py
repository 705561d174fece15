"""A resumed run is one run: one W&B run, one merged metrics record, a hint after Ctrl-C, and a
finished run is refused rather than re-tested into a one-row log (issue 11, section 4)."""

import csv
import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from consistency_vae import run_record
from consistency_vae.cli import cli_main
from tests.cli_runs import BASE, RUN_NAME, run, start
from tests.test_resume import pause_args, wait_for

SMALL = ["--data.subset=512", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
         "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false"]


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = sorted(set().union(*rows))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def moments(rows: list[dict]) -> list[tuple[int, int, tuple[str, ...]]]:
    """(epoch, step, the keys with a value) of each row."""
    return [(int(r["epoch"]), int(r["step"]),
             tuple(sorted(k for k, v in r.items() if v and k not in ("epoch", "step")))) for r in rows]


def test_merged_record_keeps_each_moment_once_the_resumed_attempts_where_they_overlap(tmp_path):
    # attempt 1: epoch 0 (steps 0-3), then steps 4-6 of epoch 1 before Ctrl-C; the checkpoint is
    # epoch 0's, so attempt 2 redoes steps 4-6 (the same 3 steps in both logs) and goes on.
    write_csv(tmp_path / "metrics.attempt1.csv",
              [{"epoch": 0, "step": s, "train/loss_step": 10 - s} for s in range(4)]
              + [{"epoch": 0, "step": 3, "val/loss": 7.0}]
              + [{"epoch": 1, "step": s, "train/loss_step": 99} for s in range(4, 7)])
    write_csv(tmp_path / "metrics.csv",
              [{"epoch": 1, "step": s, "train/loss_step": 10 - s} for s in range(4, 8)]
              + [{"epoch": 1, "step": 7, "val/loss": 5.0}])
    rows = run_record.merged_rows(tmp_path)
    assert [(r["epoch"], r["step"]) for r in rows if "train/loss_step" in r] == [
        (str(e), str(s)) for e, s in [(0, 0), (0, 1), (0, 2), (0, 3), (1, 4), (1, 5), (1, 6), (1, 7)]]
    assert "99" not in {r["train/loss_step"] for r in rows if "train/loss_step" in r}  # superseded
    assert [r["val/loss"] for r in rows if "val/loss" in r] == ["7.0", "5.0"]
    path = run_record.write_merged(tmp_path)
    assert moments(list(csv.DictReader(path.open()))) == moments(rows)


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    import wandb

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    monkeypatch.setenv("WANDB_SERVICE", "")
    monkeypatch.delenv("WANDB_SERVICE")  # no wandb service shared with other tests
    wandb.teardown()
    yield tmp_path
    wandb.teardown()


@pytest.mark.slow
def test_resume_continues_the_same_wandb_run_and_one_record(offline_wandb, data_dir, capsys):
    fit = ["fit", "--config", BASE, f"--data.data_dir={data_dir}", *SMALL]
    cli_main([*fit, "--trainer.max_epochs=1"])
    folder = offline_wandb / "runs" / RUN_NAME / "version_0"
    first_id = (folder / "wandb_id").read_text().strip()
    cli_main([*fit, "--trainer.max_epochs=2", "--ckpt_path", "last"])
    assert not (folder.parent / "version_1").exists()

    # W&B: both attempts logged offline into the run with the id the folder keeps
    attempts = sorted((offline_wandb / "runs/wandb").glob("offline-run-*"))
    assert len(attempts) == 2
    assert {p.name.rsplit("-", 1)[1] for p in attempts} == {first_id}
    assert (folder / "wandb_id").read_text().strip() == first_id

    # metrics: one record over both attempts, every epoch once, the final test at the end
    assert (folder / "metrics.attempt1.csv").is_file()
    rows = list(csv.DictReader((folder / run_record.MERGED).open()))
    val_epochs = [int(r["epoch"]) for r in rows if r.get("val/loss")]
    assert val_epochs == [0, 1]
    # each attempt's final test of its best checkpoint (epoch 0 of 1, then epoch 1 of 2), once each,
    # in a row that names the epoch of the weights it tested
    assert [int(float(r["epoch"])) for r in rows if r.get("test/loss")] == [0, 1]
    assert json.loads((folder / "status.json").read_text())["status"] == "finished"

    # a finished run: refused, with the fix, before anything in the folder changed
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*fit, "--trainer.max_epochs=2", "--ckpt_path", "last"])
    message = str(exit_info.value.code)
    assert "finished run" in message and "--trainer.max_epochs=N with N > 2" in message
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert len(list((offline_wandb / "runs/wandb").glob("offline-run-*"))) == 2  # no W&B run either


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_the_record_has_no_repeated_steps(tmp_path, data_dir):
    # 4 steps per epoch, a row per step; Ctrl-C at step 7 of epoch 1: steps 4-6 are redone
    args = ["fit", "--config", BASE, f"--data.data_dir={data_dir}", "--data.subset=600",
            "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=1",
            "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false",
            "--trainer.log_every_n_steps=1", "--trainer.max_epochs=2"]
    process = start(tmp_path, *args, *pause_args(tmp_path / "paused", at_step=7))
    wait_for(tmp_path / "paused", process)
    os.kill(process.pid, signal.SIGINT)  # what Ctrl-C sends
    assert process.wait(timeout=120) == 128 + signal.SIGINT
    log = (tmp_path / "cli.log").read_text()
    assert "stopped by Ctrl-C (SIGINT); continue with the same command plus --ckpt_path last" in log
    folder = tmp_path / "runs" / RUN_NAME / "version_0"
    assert json.loads((folder / "status.json").read_text())["status"] == "interrupted"

    code, log = run(tmp_path, *args, "--ckpt_path", "last")
    assert code == 0, log
    def per_step(rows):  # the loss logged at every step (train/loss, or train/loss_step)
        return [r for r in rows if r.get("train/loss") or r.get("train/loss_step")]

    logged = per_step(row for p in run_record.attempt_files(folder) for row in csv.DictReader(p.open()))
    repeated = [s for s, n in Counter(int(r["step"]) for r in logged).items() if n > 1]
    assert repeated  # the two attempts' logs overlap ...
    merged = per_step(csv.DictReader((folder / run_record.MERGED).open()))
    steps = [int(r["step"]) for r in merged]
    assert steps == sorted(set(steps)) and len(steps) == 8  # ... the record does not: 2 epochs x 4
