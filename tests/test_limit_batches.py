"""A fractional ``--trainer.limit_*_batches`` that leaves a process no batch is refused before the
trainer runs, the same on every process, naming the real flag (issue 20, item 12).

Lightning refuses it only on the processes it happens to (under DDP, rank 0 then died in gloo
waiting for the other), and cli_checks named the first backquoted word of its message,
``val_dataloader``, as the flag to fix.
"""

import pytest
import torch
from lightning.pytorch.trainer.connectors.data_connector import _parse_num_batches
from lightning.pytorch.trainer.states import RunningStage
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from consistency_vae import cli_checks
from consistency_vae.cli import cli_main
from consistency_vae.datamodule import UnpaddedDistributedSampler
from tests.cli_runs import BASE, RUN_NAME, csv_only, run

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
TIMEOUT_S = 240  # a 2-process fit of one epoch on 300 images takes ~30 s on 2 busy cores


def fit_args(data_dir, *extra: str) -> list[str]:
    return ["fit", "--config", BASE, "--data.data_dir", str(data_dir), "--data.subset=300",
            "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", csv_only(), *extra]


@pytest.mark.parametrize("stage, flag", [(RunningStage.VALIDATING, "limit_val_batches"),
                                         (RunningStage.TRAINING, "limit_train_batches"),
                                         (RunningStage.TESTING, "limit_test_batches")])
def test_lightnings_own_refusal_names_the_limit_flag(stage, flag):
    with pytest.raises(Exception) as refusal:  # Lightning's message: "... of the `val_dataloader` ..."
        _parse_num_batches(stage, 1, 0.5)
    message = cli_checks.describe_library_error(refusal.value)
    assert f"Fix --trainer.{flag} " in message and "--trainer.val_dataloader" not in message


@pytest.mark.parametrize("images, batch_size", [(300, 100), (301, 100), (7, 2), (1000, 1000), (5, 7)])
@pytest.mark.parametrize("processes", [1, 2, 3])
def test_fewest_batches_is_what_the_samplers_deal(images, batch_size, processes):
    data = TensorDataset(torch.zeros(images))
    evaluation = [len(DataLoader(data, batch_size, sampler=UnpaddedDistributedSampler(
        data, processes, rank, batch_size))) for rank in range(processes)]
    training = [len(DataLoader(data, batch_size, drop_last=True, sampler=DistributedSampler(
        data, processes, rank, drop_last=True))) for rank in range(processes)]
    assert cli_checks.fewest_batches(images, batch_size, processes, drop_last=False) == min(evaluation)
    assert cli_checks.fewest_batches(images, batch_size, processes, drop_last=True) == min(training)


def test_one_process_is_refused_before_training(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    # 300 validation images in batches of 100: int(3 x 0.2) = 0
    with pytest.raises(SystemExit) as exit_:
        cli_main(fit_args(data_dir, "--data.eval_batch_size=100", "--trainer.limit_val_batches=0.2"))
    message = str(exit_.value.code)
    assert message.startswith("consistency-vae: error: --trainer.limit_val_batches=0.2 keeps int(3 x 0.2)")
    assert "use --trainer.limit_val_batches >= 0.334" in message and "\n" not in message
    assert not list(tmp_path.rglob("*.ckpt"))


def test_the_smallest_fraction_it_suggests_keeps_one_batch():
    for batches in range(1, 2000):
        least = cli_checks.least_fraction(batches)
        assert int(batches * least) >= 1 and least <= max(1 / batches + 0.001, 0.001), batches


def test_two_gloo_processes_get_one_line_and_no_traceback(tmp_path, data_dir):
    # 3 evaluation batches dealt to 2 processes: 2 and 1, and int(1 x 0.5) = 0 on rank 1 only
    code, log = run(tmp_path, *fit_args(data_dir, "--data.eval_batch_size=100",
                                        "--trainer.limit_val_batches=0.5", *DDP), timeout=TIMEOUT_S)
    assert code == 1 and "Traceback" not in log, log
    lines = [line for line in log.splitlines() if line.startswith("consistency-vae: error: ")]
    assert len(lines) == 1 and "--trainer.limit_val_batches=0.5 keeps int(1 x 0.5) = 0" in lines[0], log
    assert "on the process with the fewest, of 2" in lines[0]
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.slow
def test_two_gloo_processes_train_when_every_process_keeps_a_batch(tmp_path, data_dir):
    # 6 evaluation batches of 50, 3 per process: int(3 x 0.5) = 1 each, so Lightning agrees to run
    code, log = run(tmp_path, *fit_args(data_dir, "--data.eval_batch_size=50",
                                        "--trainer.limit_val_batches=0.5", *DDP), timeout=TIMEOUT_S)
    assert code == 0 and "Traceback" not in log, log
    assert (tmp_path / "runs" / RUN_NAME / "version_0/checkpoints/last.ckpt").is_file()
