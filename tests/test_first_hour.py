"""A researcher's first hour (issue 11, sections 1-2): nothing reports success for work it did not
do, and a user's mistake gets one line with the fix, never a traceback."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from consistency_vae import checkpointing, cli_checks, data_files
from consistency_vae.cli import ConsistencyCLI, cli_main
from consistency_vae.errors import CheckpointError, DataError
from consistency_vae.model import ConsistencyVAE
from consistency_vae.sweep import sweep_file as sweep
from tests.cli_runs import BASE, RUN_NAME, csv_only
from tests.conftest import ROOT

TINY = ["--data.subset=256", "--data.eval_batch_size=256", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.max_epochs=1",
        "--trainer.callbacks=[]"]  # no figures: seconds saved, nothing here is about them


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, data_dir) -> list[str]:
    monkeypatch.chdir(tmp_path)
    return ["--config", BASE, "--data.data_dir", str(data_dir), *TINY]


def fails(capsys, *args: str) -> str:
    """Run the CLI, expect a non-zero exit; return what the user sees (the exit message and stderr)."""
    with pytest.raises(SystemExit) as exit_:
        cli_main(list(args))
    code = exit_.value.code
    assert code not in (0, None)
    return (code if isinstance(code, str) else "") + capsys.readouterr().err


def one_line(message: str) -> str:
    line = message.strip().splitlines()[-1]
    assert "Traceback" not in message and line.startswith("consistency-vae: error: "), message
    return line


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir) -> Path:
    """A finished one-epoch run (CSV logger only): its folder runs/NAME/version_0."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        torch.set_num_threads(1)
        cli_main(["fit", "--config", BASE, "--data.data_dir", str(data_dir), *TINY, csv_only(),
                  "--trainer.callbacks+=consistency_vae.checkpointing.AtomicModelCheckpoint",
                  "--trainer.callbacks.init_args.save_last=true"])
    return root / "runs" / RUN_NAME / "version_0"


# --- 1. nothing reports success for work it did not do -----------------------------------------
def test_a_batch_larger_than_the_training_split_is_refused_before_any_work(in_tmp, tmp_path, capsys):
    line = one_line(fails(capsys, "fit", *in_tmp, "--data.batch_size=100000"))
    assert "data.batch_size=100000 is larger than the training split (256 images" in line
    assert "--data.batch_size <= 256" in line
    assert not list(tmp_path.rglob("version_*")) and not list(tmp_path.rglob("*.ckpt"))


def test_a_fit_that_trained_no_step_exits_non_zero_without_done(in_tmp, capsys):
    message = fails(capsys, "fit", *in_tmp, "--trainer.limit_train_batches=0")
    assert "fit trained no step" in one_line(message) and "Done." not in message


def test_a_run_fetches_nothing_outside_the_default_data_folder(tmp_path, monkeypatch):
    typo = tmp_path / "dta"
    with pytest.raises(DataError) as err:
        data_files.prepare_for_run(typo, "mnist")
    assert f"consistency-vae data --dataset mnist --data_dir {typo}" in str(err.value)
    assert not typo.exists()  # no folder, no download
    monkeypatch.chdir(tmp_path)  # another directory: the config's relative data/ is not the default
    with pytest.raises(DataError, match=f"no MNIST files in data/MNIST/raw .*that is {tmp_path / 'data'}"):
        data_files.prepare_for_run("data", "mnist")
    assert not (tmp_path / "data").exists()


def test_the_default_data_folder_still_fetches_and_verifies(data_dir):
    assert data_files.DEFAULT_DATA_DIR.resolve() == data_dir.resolve()  # tests/conftest, make data
    assert data_files.prepare_for_run(data_dir, "mnist") == data_dir / "MNIST" / "raw"


def test_fit_from_another_directory_stops_with_the_fetch_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = one_line(fails(capsys, "fit", "--config", BASE, *TINY))  # data_dir: data, relative
    assert f"consistency-vae data --dataset mnist --data_dir {tmp_path / 'data'}" in line
    assert not (tmp_path / "data").exists()


def test_an_overlay_alone_is_refused_naming_the_base(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAKELEVEL", raising=False)  # `make test` sets it: the CLI typed by hand
    overlay = str(ROOT / "configs/fashion_mnist.yaml")
    line = one_line(fails(capsys, "fit", "--config", overlay))
    assert "only overlays a base config" in line and f"--config {BASE} --config {overlay}" in line
    assert not list(tmp_path.iterdir())  # no lightning_logs/


@pytest.mark.parametrize("command", ["test", "predict"])
def test_evaluation_writes_into_the_checkpoints_run_folder_without_wandb(trained, data_dir, monkeypatch,
                                                                         command):
    monkeypatch.chdir(trained.parents[2])
    loggers = []
    monkeypatch.setattr(ConsistencyCLI, f"after_{command}",
                        lambda self: loggers.append([type(lg).__name__ for lg in self.trainer.loggers]),
                        raising=False)
    ckpt = f"--ckpt_path={trained / 'checkpoints/last.ckpt'}"
    args = [command, "--config", BASE, "--data.data_dir", str(data_dir), *TINY, ckpt]
    run_files = {p: p.stat().st_mtime_ns for p in [*trained.glob("*"), *trained.glob("checkpoints/*")]
                 if p.is_file()}
    cli_main(args)
    cli_main([*args, "--wandb=true"])  # W&B only when asked (WANDB_MODE=disabled in the tests)
    assert loggers == [["CSVLogger"], ["CSVLogger", "WandbLogger"]]
    assert {p: p.stat().st_mtime_ns for p in run_files} == run_files  # the run's own files untouched
    assert sorted(p.name for p in trained.parent.iterdir()) == ["version_0"]  # no new run
    assert sorted(p.name for p in (trained / command).iterdir()) == ["version_0", "version_1"]


def test_predict_writes_means_log_variances_and_labels_of_the_chosen_split(trained, data_dir, monkeypatch,
                                                                          capsys):
    monkeypatch.chdir(trained.parents[2])
    ckpt = trained / "checkpoints/last.ckpt"
    cli_main(["predict", "--config", BASE, "--data.data_dir", str(data_dir), *TINY, f"--ckpt_path={ckpt}",
              "--data.predict_split=val"])
    printed = [line.rsplit(" ", 1)[-1] for line in capsys.readouterr().out.splitlines()
               if line.startswith("consistency-vae: predictions written to ")]
    pt, npz = (Path(p) for p in printed)
    assert pt.parent.parent.parent == trained and pt.name == "predictions_val.pt" and npz.suffix == ".npz"
    saved, arrays = torch.load(pt), np.load(npz)
    # the reference: the checkpoint's encoder on the first 256 images of the validation split
    from consistency_vae.datamodule import MNISTDataModule

    dm = MNISTDataModule(data_dir=str(data_dir), subset=256, on_device=False)
    dm.setup()
    model = ConsistencyVAE.load_from_checkpoint(ckpt, map_location="cpu").eval()
    with torch.no_grad():
        mu, logvar = model.encode(dm.val_set.images)
    assert saved["mu"].shape == saved["logvar"].shape == (256, model.hparams.latent_dim)
    torch.testing.assert_close(saved["mu"], mu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(saved["logvar"], logvar, rtol=1e-5, atol=1e-5)
    assert torch.equal(saved["label"], dm.val_set.labels) and saved["split"] == "val"
    np.testing.assert_array_equal(arrays["mu"], saved["mu"].numpy())
    np.testing.assert_array_equal(arrays["label"], saved["label"].numpy())


# --- 2. no traceback for a user's mistake -------------------------------------------------------
def test_a_negative_max_epochs_is_one_line_with_the_flag(in_tmp, capsys):
    line = one_line(fails(capsys, "fit", *in_tmp, "--trainer.max_epochs=-3"))
    assert "You passed in -3" in line and "Fix --trainer.max_epochs" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_accelerator_gpu_without_a_gpu_is_one_line_with_the_fix(in_tmp, capsys):
    line = one_line(fails(capsys, "fit", *in_tmp, "--trainer.accelerator=gpu"))
    assert "no GPU" in line and "--trainer.accelerator=cpu" in line


def test_wandb_online_without_a_key_is_refused_before_any_work(in_tmp, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no wandb settings
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    line = one_line(fails(capsys, "fit", *in_tmp))
    assert "WANDB_MODE=online, but W&B has no API key" in line and "wandb login" in line
    assert not list(tmp_path.rglob("version_*"))


def test_wandb_usage_error_at_setup_becomes_one_line():
    from wandb.errors import UsageError

    message = cli_checks.describe_library_error(UsageError("No API key configured. Use `wandb login`."))
    assert message.startswith("W&B refused to start: No API key") and "WANDB_MODE=offline" in message
    assert cli_checks.describe_library_error(ValueError("a bug")) is None  # a bug keeps its traceback


@pytest.mark.parametrize("flag, key", [("--model.alpha=abc", "--model.alpha"),
                                       ("--model.alpah=1", "--model.alpha")])
def test_a_parse_error_ends_with_the_error_under_a_short_usage(in_tmp, capsys, flag, key):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", *in_tmp, flag])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 5 and err[-1].startswith("error: ") and flag.split("=")[0][2:] in err[-1]
    assert any(line.strip().startswith(key + " ") for line in err[:-1])  # that key's --help line


def _torch_zip() -> bytes:
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(64, 64)}}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("content, expected", [
    (b"model:\n  alpha: 1.0\n", "not a checkpoint at all"),  # a config passed as --ckpt_path
    (b"", "not a checkpoint at all"),
    (_torch_zip()[:2000], "a damaged checkpoint: the file is truncated or corrupted"),
    (_torch_zip()[:100] + b"\xff" * 3000 + _torch_zip()[3100:], "a damaged checkpoint"),
], ids=["yaml", "empty", "truncated", "corrupted"])
def test_not_a_checkpoint_is_told_apart_from_a_damaged_one(tmp_path, content, expected):
    path = tmp_path / "x.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected) as err:
        checkpointing.load_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_the_sweep_runner_refuses_a_misspelt_parameter_before_the_first_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the sweep's command reads configs/mnist.yaml from here
    config = yaml.safe_load((ROOT / "sweeps/alpha_mnist.yaml").read_text())
    config["parameters"]["model.alpah"] = config["parameters"].pop("model.alpha")
    bad = tmp_path / "typo.yaml"
    bad.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_:
        cli_main(["sweep", str(bad), "--count", "1", "--runs_dir", str(tmp_path / "runs")])
    message = str(exit_.value.code)
    assert "the CLI refuses its runs' command, nothing was run" in message
    assert "did you mean --model.alpha?" in message and "--model.alpah=" in message
    assert not (tmp_path / "runs").exists()  # no run was launched
    sweep.check_against_cli(ROOT / "sweeps/alpha_mnist.yaml",  # a shipped file passes
                            sweep.load_sweep(ROOT / "sweeps/alpha_mnist.yaml"), [])


def test_an_evaluation_folder_is_not_counted_as_a_run(trained, data_dir, monkeypatch):
    from consistency_vae.sweep.report import find_runs

    monkeypatch.chdir(trained.parents[2])
    cli_main(["test", "--config", BASE, "--data.data_dir", str(data_dir), *TINY,
              f"--ckpt_path={trained / 'checkpoints/last.ckpt'}"])
    assert (trained / "test").is_dir()  # RUN/test/version_K: its own config.yaml and metrics.csv
    assert [r["run_dir"] for r in find_runs(trained.parents[1])] == [str(trained)]


def test_under_make_the_overlay_fix_is_in_the_make_form(tmp_path, monkeypatch, capsys):
    # `make train CONFIG=configs/fashion_mnist.yaml` was told to type the raw --config form
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MAKELEVEL", "1")  # what make sets for the commands it runs
    line = one_line(fails(capsys, "fit", "--config", "configs/fashion_mnist.yaml"))
    assert 'make train ARGS="--config configs/fashion_mnist.yaml" (CONFIG stays the base' in line
