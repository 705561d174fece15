"""A resume never drops a flag (issue 20, items 1, 2 and 4).

Lightning reads the checkpoint's hyper-parameters over the command line's: `--ckpt_path X
--model.latent_dim=16` once trained X's 2-D model in a folder named z16, and `--model.lr=1e-4` went
on at 1e-3. Every model.* and data.* key (and the seed) is walked through a resume here: each is
honoured (config.yaml, hparams.yaml and the trained state say the new value) or refused in one
line before any work.
"""

import csv
import inspect
import shutil

import pytest
import torch
import yaml

from consistency_vae.cli import cli_main
from consistency_vae.datamodule import MNISTDataModule
from consistency_vae.model import ConsistencyVAE
from consistency_vae.resume_flags import IGNORED
from tests.cli_runs import BASE, csv_only

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--data.subset=512", "--data.eval_batch_size=512", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.callbacks=[]",
        "--trainer.callbacks+=consistency_vae.checkpointing.AtomicModelCheckpoint",
        "--trainer.callbacks.init_args.save_last=true", "--trainer.callbacks.init_args.monitor=val/loss"]

# key -> (flag that changes it, "honoured" or "refused"). Every argument of the model and the data
# module is here: a new one fails test_every_key_has_a_decision until it is given one.
MODEL = {
    "encoder": ("--model.encoder.init_args.hidden_dims=[32]", "refused"),
    "decoder": ("--model.decoder.init_args.hidden_dims=[32]", "refused"),
    "latent_dim": ("--model.latent_dim=16", "refused"),
    "alpha": ("--model.alpha=3", "honoured"),
    "alpha_mode": ("--model.alpha_mode=constrained", "refused"),
    "kl_target": ("--model.kl_target=2.5", "honoured"),
    "alpha_lr": ("--model.alpha_lr=0.05", "honoured"),
    "constraint_ema": ("--model.constraint_ema=0.9", "honoured"),
    "consistency_grad_through_decoder": ("--model.consistency_grad_through_decoder=false", "honoured"),
    "lr": ("--model.lr=0.0001", "honoured"),
    "lr_schedule": ("--model.lr_schedule=cosine", "refused"),
    "divergence": ("--model.divergence=consistency_vae.divergences.ReverseKL", "refused"),
    "multiplier": ("--model.multiplier=consistency_vae.multipliers.GECO", "refused"),
}
DATA = {
    "dataset": ("--data.dataset=fashion_mnist", "refused"),
    "data_dir": (None, "honoured"),  # the same files by another path: set in the test
    "batch_size": ("--data.batch_size=64", "refused"),
    "eval_batch_size": ("--data.eval_batch_size=256", "honoured"),
    "val_size": ("--data.val_size=1000", "refused"),
    "split_seed": ("--data.split_seed=1", "refused"),
    "on_device": ("--data.on_device=false", "honoured"),
    "subset": ("--data.subset=640", "refused"),
    "predict_split": ("--data.predict_split=val", "honoured"),
    "path": ("--data.path=elsewhere", "refused"),
    "binarize": ("--data.binarize=dynamic", "refused"),
}


def test_every_key_has_a_decision():
    model_keys = set(inspect.signature(ConsistencyVAE).parameters) - set(IGNORED)
    assert model_keys == set(MODEL)
    assert set(inspect.signature(MNISTDataModule).parameters) == set(DATA)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, data_dir):
    """One epoch at alpha=1, fixed mode; each test resumes a copy of it."""
    root = tmp_path_factory.mktemp("first")
    flags = ["--config", BASE, "--data.data_dir", str(data_dir), *TINY]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        cli_main(["fit", *flags, csv_only(), "--trainer.max_epochs=1"])
    return root, flags


def _resume(first_run, tmp_path, monkeypatch, *extra: str) -> tuple:
    root, flags = first_run
    shutil.copytree(root / "runs", tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    last = "runs/mnist_alpha1.0_seed0/version_0/checkpoints/last.ckpt"
    cli_main(["fit", *flags, csv_only(1), "--trainer.max_epochs=2", f"--ckpt_path={last}", *extra])
    run = tmp_path / "runs/mnist_alpha1.0_seed0/version_1"
    config = yaml.safe_load((run / "config.yaml").read_text())
    return run, config, torch.load(run / "checkpoints/last.ckpt", weights_only=True)


def _value(flag: str):
    return yaml.safe_load(flag.split("=", 1)[1])


@pytest.mark.parametrize("section, key", [("model", k) for k, (_, d) in MODEL.items() if d == "refused"]
                         + [("data", k) for k, (_, d) in DATA.items() if d == "refused"])
def test_a_flag_a_resume_cannot_honour_is_refused_in_one_line(first_run, tmp_path, monkeypatch, section, key):
    flag = (MODEL if section == "model" else DATA)[key][0]
    with pytest.raises(SystemExit) as exit_:
        _resume(first_run, tmp_path, monkeypatch, flag)
    message = str(exit_.value.code)
    assert message.startswith("consistency-vae: error: --ckpt_path ") and "\n" not in message
    assert f"cannot resume with {section}.{key}=" in message and "start a new run" in message
    assert not (tmp_path / "runs/mnist_alpha1.0_seed0/version_1/checkpoints").exists()  # no work done


def test_another_seed_is_refused(first_run, tmp_path, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        _resume(first_run, tmp_path, monkeypatch, "--seed_everything=1")
    assert "cannot resume with seed_everything=1 (the checkpoint's: 0)" in str(exit_.value.code)


@pytest.mark.slow
@pytest.mark.parametrize("key", [k for k, (_, d) in MODEL.items() if d == "honoured"])
def test_a_model_flag_a_resume_can_honour_is_trained_and_recorded(first_run, tmp_path, monkeypatch, capsys,
                                                                  key):
    flag = MODEL[key][0]
    capsys.readouterr()
    run, config, saved = _resume(first_run, tmp_path, monkeypatch, flag)
    wanted = _value(flag)
    assert config["model"][key] == wanted  # config.yaml
    assert yaml.safe_load((run / "hparams.yaml").read_text())[key] == wanted
    assert saved["hyper_parameters"][key] == wanted
    err = capsys.readouterr().err
    if key == "lr":  # the resumed optimizer trained at it
        assert {g["lr"] for g in saved["optimizer_states"][0]["param_groups"]} == {wanted}
        assert "the checkpoint trained at lr=0.001; this run continues at model.lr=0.0001" in err
    elif key == "alpha":
        assert saved["state_dict"]["alpha"].item() == wanted
    else:
        assert f"resuming with model.{key}={wanted}" in err


@pytest.mark.slow
@pytest.mark.parametrize("key", [k for k, (_, d) in DATA.items() if d == "honoured"])
def test_a_data_flag_a_resume_can_honour_is_used_and_recorded(first_run, tmp_path, monkeypatch, data_dir,
                                                              key):
    flag = DATA[key][0] or f"--data.data_dir={tmp_path / 'same_data'}"
    if key == "data_dir":
        (tmp_path / "same_data").symlink_to(data_dir)
    run, config, saved = _resume(first_run, tmp_path, monkeypatch, flag)
    wanted = _value(flag) if key != "data_dir" else str(tmp_path / "same_data")
    assert config["data"][key] == wanted
    assert saved["datamodule_hyper_parameters"][key] == wanted


def test_the_lr_of_a_cosine_schedule_is_refused(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    flags = ["--config", BASE, "--data.data_dir", str(data_dir), *TINY, csv_only(),
             "--model.lr_schedule=cosine", "--trainer.max_epochs=1"]
    cli_main(["fit", *flags])
    last = next((tmp_path / "runs").rglob("last.ckpt"))
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", *flags, "--model.lr=0.0001", f"--ckpt_path={last}"])
    assert "cannot resume with model.lr=0.0001 (the checkpoint's: 0.001)" in str(exit_.value.code)


def test_a_constrained_resume_with_a_new_alpha_is_refused_and_says_the_multiplier(tmp_path, monkeypatch,
                                                                                 data_dir):
    monkeypatch.chdir(tmp_path)
    flags = ["--config", BASE, "--data.data_dir", str(data_dir), *TINY, csv_only(),
             "--model.alpha_mode=constrained", "--trainer.max_epochs=1"]
    cli_main(["fit", *flags])
    last = next((tmp_path / "runs").rglob("last.ckpt"))
    alpha_now = torch.load(last, weights_only=True)["state_dict"]["alpha"].item()
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", *flags, "--model.alpha=5", "--trainer.max_epochs=2", f"--ckpt_path={last}"])
    message = str(exit_.value.code)
    assert "cannot resume with model.alpha=5.0 (the checkpoint's: 1.0)" in message
    assert f"continues the checkpoint's multiplier (alpha={alpha_now:.4g} now)" in message


def test_the_final_test_row_names_the_best_epoch_and_the_closing_lines_say_which(tmp_path, monkeypatch,
                                                                                data_dir, capsys):
    # mode=max on val/loss: the first epoch (the worst) is "best", so best and last differ
    monkeypatch.chdir(tmp_path)
    cli_main(["fit", "--config", BASE, "--data.data_dir", str(data_dir), *TINY, csv_only(),
              "--trainer.callbacks.init_args.mode=max", "--trainer.max_epochs=3"])
    out = capsys.readouterr().out
    assert "epoch=0-step=4.ckpt (epoch 1 of 3, chosen by val/loss)" in out
    assert "the last epoch (3), in last.ckpt and the run's figures: val KL(z'||z)" in out
    with open(tmp_path / "runs/mnist_alpha1.0_seed0/version_0/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {int(float(r["epoch"])) for r in rows} == {0, 1, 2}  # no row for an epoch 3 that never ran
    (final,) = [r for r in rows if r["test/loss"]]
    assert int(float(final["epoch"])) == 0  # the best checkpoint's epoch
