"""Training under DDP, 2 CPU processes (gloo), each run under a timeout (cli_runs.run kills the
process group and fails the test when it passes):

- constrained mode: alpha is the same on both ranks at every step, and is the dual ascent step on
  the constraint averaged over both ranks (DDP broadcasts buffers from rank 0 before every forward,
  so a rank-local update would follow rank 0's shard only);
- train/*_epoch is the mean over every batch of both shards;
- a NaN loss on one rank only ends the run with an error on every rank, not a hang.
"""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from lightning import Callback

from consistency_vae.model import TERMS
from consistency_vae.multipliers import DualAscent
from tests.cli_runs import BASE, RUN_NAME, csv_only, run


def csv_rows(path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))

DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
TIMEOUT_S = 240  # a 2-process fit of a few steps takes ~30 s on 2 busy cores
KL_TARGET, ALPHA_LR = 1e-3, 0.05  # a target far below KL(z'||z): alpha rises at every step


class RecordSteps(Callback):
    """Per rank: each step's own terms (as training_step returned them) and alpha after the step,
    written to ``out_dir/rank<R>.json`` at the end of training."""

    def __init__(self, out_dir: str):
        self.out_dir, self.steps = out_dir, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append({"terms": outputs["terms"].tolist(), "alpha": pl_module.alpha.item()})

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(self.steps))


class PoisonRank(Callback):
    """NaN images in the batch of global step ``step`` on rank ``rank`` only."""

    def __init__(self, rank: int = 1, step: int = 2):
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            batch[0].fill_(math.nan)


def fit_args(data_dir, callback: str, *extra: str) -> list[str]:
    # 1024 training images: 4 steps of 128 per rank; no validation, one test batch per rank
    return ["fit", "--config", BASE, "--data.data_dir", str(data_dir), "--data.subset=1024",
            "--data.eval_batch_size=512", "--trainer.max_epochs=1", "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", csv_only(),
            "--trainer.callbacks=[]", f"--trainer.callbacks+=tests.test_ddp_training.{callback}",
            *extra, *DDP]


@pytest.mark.slow
def test_constrained_alpha_follows_both_ranks_and_epoch_means_cover_both_shards(tmp_path, data_dir):
    flags = [f"--trainer.callbacks.init_args.out_dir={tmp_path}", "--model.alpha_mode=constrained",
             f"--model.kl_target={KL_TARGET}", f"--model.alpha_lr={ALPHA_LR}", "--model.constraint_ema=0"]
    code, log = run(tmp_path, *fit_args(data_dir, "RecordSteps", *flags), timeout=TIMEOUT_S)
    assert code == 0, log
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 4
    kl = TERMS.index("kl_consistency")
    local = [[s["terms"][kl] for s in steps] for steps in ranks]
    assert all(a != b for a, b in zip(*local, strict=True))  # the shards differ: the test can tell
    # alpha: the same on both ranks (same computation on the same all-reduced value: exactly)...
    assert [s["alpha"] for s in ranks[0]] == [s["alpha"] for s in ranks[1]]
    # ...and the dual ascent step on the mean of both ranks' constraint (constraint_ema=0), in float32
    alpha, avg, rule = torch.tensor(1.0), torch.tensor(float("nan")), DualAscent(step=ALPHA_LR, ema=0.0)
    for step, (c0, c1) in enumerate(zip(*local, strict=True)):
        alpha, avg = rule(alpha, avg, (torch.tensor(c0) + torch.tensor(c1)) / 2, KL_TARGET)
        assert ranks[0][step]["alpha"] == pytest.approx(alpha.item(), rel=1e-6), step
    # train/*_epoch: the mean over both shards' 4 + 4 batches (float32 sums of 8 values: 1e-6)
    (epoch_row,) = [r for r in csv_rows(tmp_path / "runs" / RUN_NAME / "version_0/metrics.csv")
                    if r.get("train/loss_epoch")]
    for i, term in enumerate(TERMS):
        both = [s["terms"][i] for steps in ranks for s in steps]
        assert float(epoch_row[f"train/{term}_epoch"]) == pytest.approx(sum(both) / len(both), rel=1e-6), term
    assert float(epoch_row["train/alpha_epoch"]) == pytest.approx(alpha.item(), rel=1e-6)


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank_with_an_error(tmp_path, data_dir):
    code, log = run(tmp_path, *fit_args(data_dir, "PoisonRank"), timeout=TIMEOUT_S)
    assert code != 0
    assert "non-finite loss at epoch 0, global step 2 on rank 1 of 2: loss=nan" in log, log
    assert "non-finite loss at epoch 0, global step 2: on another rank (this is rank 0" in log, log
    assert "Traceback" not in log, log  # before: rank 1 stopped alone and rank 0 crashed in gloo
    assert not list(tmp_path.rglob("*.ckpt")), log  # no checkpoint of the poisoned state
