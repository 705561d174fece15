"""DDP set-ups that used to hang now work or end in a one-line error: 2 CPU processes (gloo), each
run under a timeout (cli_runs.run kills the process group and fails the test when it passes).

- A sweep run (``$CONSISTENCY_VAE_RUN_INFO`` set) read ``trainer.log_dir``, a broadcast, on rank 0
  only, and rank 0 waited for the other rank forever.
- An evaluation split with fewer batches than processes left a rank without a batch, which never
  joined the metrics' sync at the epoch's end.
"""

import json

import pytest

from tests.cli_runs import BASE, RUN_NAME, csv_only, run

DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
TIMEOUT_S = 240  # a 2-process fit of one step on 300 images takes ~30 s on 2 busy cores


def fit_args(data_dir, *extra: str) -> list[str]:
    return ["fit", "--config", BASE, "--data.data_dir", str(data_dir), "--data.subset=300",
            "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false", csv_only(), *DDP, *extra]


@pytest.mark.slow
def test_sweep_run_info_under_ddp_names_the_run_folder(tmp_path, data_dir):
    info = tmp_path / "run_info.json"
    # 300 images in evaluation batches of 100: 3 batches, 2 on rank 0 and 1 on rank 1 (uneven works)
    code, log = run(tmp_path, *fit_args(data_dir, "--data.eval_batch_size=100"), timeout=TIMEOUT_S,
                    env={"CONSISTENCY_VAE_RUN_INFO": str(info)})
    assert code == 0, log
    run_dir = tmp_path / "runs" / RUN_NAME / "version_0"
    assert json.loads(info.read_text()) == {"run_dir": f"runs/{RUN_NAME}/version_0", "wandb_run_dir": None}
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints/last.ckpt").is_file()
    assert "test ELBO" in log  # the fit's closing test ran on both ranks


@pytest.mark.slow
def test_fewer_evaluation_batches_than_processes_is_refused_before_training(tmp_path, data_dir):
    # 300 validation images in one batch of 1000 for two processes
    code, log = run(tmp_path, *fit_args(data_dir, "--data.eval_batch_size=1000"), timeout=TIMEOUT_S)
    assert code != 0
    assert ("data.eval_batch_size=1000 deals the 300 validation images in 1 batch(es) to 2 processes"
            in log and "use --data.eval_batch_size <= 299, or fewer processes" in log), log
    assert "Traceback" not in log, log
    assert not list(tmp_path.rglob("*.ckpt"))
