"""A fixed alpha is the hyper-parameter, never a checkpoint's buffer; a constrained multiplier is state.

`fit --ckpt_path X --model.alpha=3` trains at 3 (the run folder, hparams.yaml, the logs and the new
checkpoints agree), and `load_from_checkpoint(p, alpha=0)` is a plain VAE whose loss is -ELBO.
"""

import csv
from pathlib import Path

import pytest
import torch
import yaml

from consistency_vae.cli import cli_main
from consistency_vae.model import ConsistencyVAE
from tests.cli_runs import BASE, RUN_NAME, csv_only


def csv_rows(path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))

TINY = ["--data.subset=512", "--data.eval_batch_size=512", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.callbacks=[]",
        "--trainer.callbacks+=consistency_vae.checkpointing.AtomicModelCheckpoint",
        "--trainer.callbacks.init_args.save_last=true", "--trainer.callbacks.init_args.monitor=val/loss"]


@pytest.fixture
def one_epoch_run(tmp_path, data_dir, monkeypatch) -> tuple[list[str], Path]:
    """A one-epoch run at alpha=1 in tmp_path (the working directory): (common flags, last.ckpt)."""
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    flags = ["--config", BASE, "--data.data_dir", str(data_dir), *TINY, csv_only()]
    cli_main(["fit", *flags, "--trainer.max_epochs=1"])
    yield flags, tmp_path / "runs" / RUN_NAME / "version_0/checkpoints/last.ckpt"
    torch.set_num_threads(threads)


def test_fit_from_a_checkpoint_trains_at_the_new_fixed_alpha(one_epoch_run, tmp_path, capsys):
    flags, last = one_epoch_run
    capsys.readouterr()
    cli_main(["fit", *flags, "--trainer.max_epochs=2", "--model.alpha=3", f"--ckpt_path={last}"])
    assert "the checkpoint was trained at alpha=1; this model uses model.alpha=3" in capsys.readouterr().err
    run = tmp_path / "runs" / RUN_NAME / "version_1"
    assert yaml.safe_load((run / "hparams.yaml").read_text())["alpha"] == 3.0
    epoch_rows = [r for r in csv_rows(run / "metrics.csv") if r.get("train/alpha_epoch")]
    assert [(int(r["epoch"]), float(r["train/alpha_epoch"])) for r in epoch_rows] == [(1, 3.0)]
    saved = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["alpha"] == 3.0 and saved["state_dict"]["alpha"].item() == 3.0


def test_load_with_alpha_zero_is_a_plain_vae_whose_loss_is_minus_the_elbo(one_epoch_run, capsys):
    _, last = one_epoch_run
    capsys.readouterr()
    model = ConsistencyVAE.load_from_checkpoint(last, alpha=0.0).eval()
    assert "the checkpoint was trained at alpha=1; this model uses model.alpha=0" in capsys.readouterr().err
    assert model.alpha.item() == 0.0 and model._is_plain_vae
    with torch.no_grad():
        out = model(torch.rand(8, 1, 28, 28), torch.Generator().manual_seed(0))
    assert out["kl_consistency"].abs().min() > 0  # the term is there; its weight is 0
    assert torch.equal(out["loss"], out["recon"] + out["kl"])  # recon + kl + 0 * C: the same sum


def test_same_alpha_loads_silently_and_unchanged(one_epoch_run, capsys):
    _, last = one_epoch_run
    capsys.readouterr()
    model = ConsistencyVAE.load_from_checkpoint(last)
    assert model.alpha.item() == 1.0 and "trained at alpha" not in capsys.readouterr().err


def test_an_alpha_that_float32_cannot_hold_exactly_loads_silently(capsys):
    model = ConsistencyVAE(alpha=0.1)  # the buffer holds float32(0.1) != 0.1
    checkpoint = {"state_dict": dict(model.state_dict())}
    model.on_load_checkpoint(checkpoint)
    assert "trained at alpha" not in capsys.readouterr().err
    assert checkpoint["state_dict"]["alpha"].item() == pytest.approx(0.1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_fixed_alpha_checkpoint_loads_whole_onto_the_gpu(tmp_path):
    # Lightning moves a loaded model to the device of its state's first tensor, which is alpha's:
    # a fixed alpha rebuilt on the CPU once put a model loaded with map_location="cuda" back on
    # the CPU, and evaluate --device cuda failed on its first batch.
    torch.save({"state_dict": ConsistencyVAE(alpha=0.5).state_dict(), "hyper_parameters": {"alpha": 3.0},
                "pytorch-lightning_version": "2.6.6"}, tmp_path / "fixed.ckpt")
    loaded = ConsistencyVAE.load_from_checkpoint(tmp_path / "fixed.ckpt", map_location="cuda")
    assert {t.device.type for t in loaded.state_dict().values()} == {"cuda"}
    assert loaded.alpha.item() == 3.0


def test_a_constrained_multiplier_resumes_from_the_checkpoint_and_says_so(tmp_path, capsys):
    model = ConsistencyVAE(alpha=1.0, alpha_mode="constrained")
    model.alpha = torch.tensor(2.5)  # as after some dual ascent steps
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                  "pytorch-lightning_version": "2.6.6"}
    model.on_save_checkpoint(checkpoint)  # as Lightning's save calls it
    torch.save(checkpoint, tmp_path / "c.ckpt")
    loaded = ConsistencyVAE.load_from_checkpoint(tmp_path / "c.ckpt", alpha=5.0)
    # 5 would only be the initial value: the multiplier goes on from 2.5, and hparams record what was
    # used (they once said 5.0, silently)
    assert loaded.alpha.item() == 2.5 and loaded.hparams.alpha == 1.0
    assert ("constrained mode continues the checkpoint's multiplier at alpha=2.5; model.alpha=5 would only "
            "be its initial value and is not used") in capsys.readouterr().err
