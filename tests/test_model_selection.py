"""Which checkpoint is "best": val/selection, a criterion that does not move with alpha; and what
`fit` says when there is no validation to choose by."""

import csv
from pathlib import Path

import pytest
import torch
import yaml
from lightning import Trainer
from lightning.pytorch.loggers import CSVLogger

from consistency_vae.checkpointing import AtomicModelCheckpoint
from consistency_vae.cli import cli_main
from consistency_vae.constraint import INFEASIBLE, selection_criterion
from consistency_vae.datamodule import MNISTDataModule
from consistency_vae.model import ConsistencyVAE
from tests.cli_runs import BASE, RUN_NAME, csv_only


def csv_rows(path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def criterion(elbo, kl_c, loss=0.0, mode="constrained", target=1.0) -> float:
    t = torch.tensor
    return selection_criterion(t(elbo), t(kl_c), t(loss), mode, target).item()


def test_constrained_selection_is_the_best_elbo_among_feasible_epochs_whatever_alpha():
    # epoch A: feasible, ELBO -150, val/loss at alpha 1; epoch B: feasible, ELBO -149, alpha grown
    # to 20 so its val/loss is larger: val/loss would pick A, the criterion picks B
    a, b = criterion(-150.0, 0.9, loss=150.0 + 1 * 0.9), criterion(-149.0, 0.95, loss=149.0 + 20 * 0.95)
    assert b < a and b == pytest.approx(149.0)
    # any infeasible epoch ranks below any feasible one, even with a far better ELBO
    assert criterion(-100.0, 1.01) > criterion(-500.0, 1.0) + INFEASIBLE / 2
    # among infeasible epochs, the smaller violation first (100 nats of ELBO per nat of KL)
    assert criterion(-150.0, 1.5) < criterion(-150.0, 2.0)
    assert criterion(-100.0, 2.0) > criterion(-199.0, 1.0001)


def test_fixed_selection_is_the_validation_loss():
    assert criterion(-150.0, 3.0, loss=153.0, mode="fixed") == 153.0


def test_the_default_config_keeps_the_best_val_selection():
    callbacks = yaml.safe_load(Path(BASE).read_text())["trainer"]["callbacks"]
    (checkpoint,) = [c for c in callbacks if c["class_path"].endswith("AtomicModelCheckpoint")]
    assert (checkpoint["init_args"]["monitor"], checkpoint["init_args"]["mode"]) == ("val/selection", "min")


def test_the_module_logs_val_selection_and_the_checkpoint_follows_it(tmp_path, data_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = ConsistencyVAE(alpha_mode="constrained", kl_target=0.5, alpha_lr=0.5)
        checkpoint = AtomicModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/selection",
                                           filename="best-{epoch}")
        trainer = Trainer(max_epochs=3, accelerator="cpu", logger=CSVLogger(tmp_path, name="log"),
                          callbacks=[checkpoint], enable_progress_bar=False, enable_model_summary=False,
                          num_sanity_val_steps=0)
        trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), subset=1024,
                                                      eval_batch_size=512))
    finally:
        torch.set_num_threads(threads)
    rows = [r for r in csv_rows(tmp_path / "log/version_0/metrics.csv") if r.get("val/selection")]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    values = []
    for r in rows:
        expected = criterion(float(r["val/elbo"]), float(r["val/kl_consistency"]), float(r["val/loss"]),
                             target=0.5)
        assert float(r["val/selection"]) == pytest.approx(expected, rel=1e-6)
        values.append(float(r["val/selection"]))
    best_epoch = min(range(3), key=values.__getitem__)
    assert checkpoint.best_model_path.endswith(f"best-epoch={best_epoch}.ckpt")


def test_fit_without_validation_names_last_ckpt(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cli_main(["fit", "--config", BASE, "--data.data_dir", str(data_dir), "--data.subset=512",
                  "--trainer.max_epochs=1", "--trainer.limit_val_batches=0", "--trainer.callbacks=[]",
                  "--trainer.callbacks+=consistency_vae.checkpointing.AtomicModelCheckpoint",
                  "--trainer.callbacks.init_args.save_last=true",
                  "--trainer.callbacks.init_args.monitor=val/selection",
                  "--trainer.enable_progress_bar=false", csv_only()])
    finally:
        torch.set_num_threads(threads)
    last = f"runs/{RUN_NAME}/version_0/checkpoints/last.ckpt"
    assert (tmp_path / last).is_file()
    assert ("Best checkpoint: none (no validation to select by): tested the final weights, saved as "
            f"{last}\n") in capsys.readouterr().out
