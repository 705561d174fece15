"""Constrained mode in the module: alpha as a Lagrange multiplier for KL(z'||z) <= kl_target.

The update rules alone, on a toy problem with a known answer: tests/test_multipliers.py."""

import csv

import pytest
import torch
from lightning import Trainer

from consistency_vae.cli import lightning_cli
from consistency_vae.datamodule import MNISTDataModule
from consistency_vae.model import ConsistencyVAE
from consistency_vae.tracking import finish_wandb_run
from tests.conftest import ROOT


def constrained_steps(data_dir, kl_target: float, steps: int = 30) -> ConsistencyVAE:
    model = ConsistencyVAE(alpha=1.0, alpha_mode="constrained", kl_target=kl_target, alpha_lr=0.05,
                           constraint_ema=0.0)
    trainer = Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, accelerator="cpu")
    trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), subset=5000))
    return model, trainer


def test_module_multiplier_rises_when_violated_and_falls_when_held(data_dir):
    violated, _ = constrained_steps(data_dir, kl_target=1e-4)
    held, _ = constrained_steps(data_dir, kl_target=1e3)
    assert violated.alpha.item() > 1.0
    assert held.alpha.item() == 0.0  # fell, clamped at 0 rather than below


def test_checkpoint_keeps_and_restores_alpha(data_dir, tmp_path):
    model, trainer = constrained_steps(data_dir, kl_target=1e-4)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    loaded = ConsistencyVAE.load_from_checkpoint(tmp_path / "c.ckpt")
    assert loaded.alpha.item() == pytest.approx(model.alpha.item()) and loaded.alpha.item() > 1.0
    assert loaded.constraint_avg.item() == pytest.approx(model.constraint_avg.item())


def test_constrained_mode_through_the_cli(tmp_path, data_dir, monkeypatch):
    """`fit --model.alpha_mode=constrained`: the CLI builds the constrained model, alpha rises
    while KL(z'||z) is over a target no real model meets, and the checkpoint keeps the final alpha."""
    monkeypatch.chdir(tmp_path)
    try:
        cli = lightning_cli([
            "fit", "--config", str(ROOT / "configs/mnist.yaml"), "--data.data_dir", str(data_dir),
            "--model.alpha_mode=constrained", "--model.kl_target=1e-4", "--model.alpha_lr=0.05",
            "--model.constraint_ema=0", "--trainer.max_epochs=2", "--trainer.limit_train_batches=5",
            "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
            "--trainer.enable_progress_bar=false"])
    finally:
        finish_wandb_run()
    model = cli.model
    assert model.hparams.alpha_mode == "constrained" and model.hparams.kl_target == 1e-4
    # 10 steps, each alpha += 0.05 x (KL - 1e-4) with KL > 0: it only rises, from 1.0
    (metrics,) = tmp_path.rglob("metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    logged = [float(r["train/alpha_epoch"]) for r in rows if r.get("train/alpha_epoch")]
    assert len(logged) == 2 and 1.0 < logged[0] < logged[1]
    (last,) = tmp_path.rglob("checkpoints/last.ckpt")
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["alpha_mode"] == "constrained"
    assert saved["state_dict"]["alpha"].item() == pytest.approx(logged[1], rel=1e-6)  # float32 in the CSV
    assert saved["state_dict"]["constraint_avg"].isfinite()
