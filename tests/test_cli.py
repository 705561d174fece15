"""The CLI: a short fit of every config, overrides, bad input, checkpoints."""

from pathlib import Path

import pytest
import torch
import yaml
from lightning import Callback

from consistency_vae.checkpointing import load_checkpoint
from consistency_vae.cli import cli_main, lightning_cli
from consistency_vae.model import ConsistencyVAE
from consistency_vae.tracking import finish_wandb_run
from tests.conftest import CONFIGS, ROOT

BASE = str(ROOT / "configs/mnist.yaml")
OVERLAYS = [c for c in CONFIGS if c.name != "mnist.yaml"]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, data_dir):
    """Run from an empty folder, reading the real data: outputs land in tmp_path/runs."""
    monkeypatch.chdir(tmp_path)
    return ["--data.data_dir", str(data_dir), "--trainer.enable_progress_bar=false"]


def printed_config(capsys, *args) -> dict:
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", *args, "--print_config"])
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def run_lightning_cli(args: list[str]):
    """lightning_cli (which returns the CLI object, with its model and trainer), closing its W&B run
    as cli_main does."""
    try:
        return lightning_cli(args)
    finally:
        finish_wandb_run()


def expected_classes(config_files: list[str]) -> dict[str, str]:
    """model.encoder/decoder class_path and data.dataset as the YAML files set them (last wins)."""
    found = {"encoder": None, "decoder": None, "dataset": "mnist"}  # the data module's default
    for path in config_files:
        config = yaml.safe_load(Path(path).read_text())
        for net in ("encoder", "decoder"):
            found[net] = config.get("model", {}).get(net, {}).get("class_path", found[net])
        found["dataset"] = config.get("data", {}).get("dataset", found["dataset"])
    return found


@pytest.mark.parametrize("config", [[BASE]] + [[BASE, str(c)] for c in OVERLAYS],
                         ids=lambda c: "+".join(p.rsplit("/", 1)[-1] for p in c))
def test_every_config_builds_its_networks_trains_and_saves_a_checkpoint(in_tmp, tmp_path, config):
    args = [a for c in config for a in ("--config", c)]
    # two training batches, one validation and one test batch: a whole epoch, so checkpoints are
    # written (fast_dev_run writes none)
    cli = run_lightning_cli(["fit", *args, *in_tmp, "--trainer.max_epochs=1",
                             "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                             "--trainer.limit_test_batches=1"])
    expected = expected_classes(config)
    for net in ("encoder", "decoder"):
        module = getattr(cli.model, net)
        assert f"{type(module).__module__}.{type(module).__name__}" == expected[net]
    assert cli.datamodule.hparams.dataset == expected["dataset"]
    (last,) = (tmp_path / "runs").rglob("checkpoints/last.ckpt")
    saved = load_checkpoint(last)
    assert saved["global_step"] == 2 and saved["hyper_parameters"]["alpha"] == cli.model.hparams.alpha
    assert {k: v.shape for k, v in saved["state_dict"].items()} == {
        k: v.shape for k, v in cli.model.state_dict().items()}


def test_alpha_override_equals_vae_overlay(capsys, in_tmp):
    flag = printed_config(capsys, "--config", BASE, "--model.alpha=0")
    overlay = printed_config(capsys, "--config", BASE, "--config", str(ROOT / "configs/vae.yaml"))
    assert flag == overlay and flag["model"]["alpha"] == 0.0
    # omegaconf+ mode: the override reaches the interpolated run name too
    assert flag["trainer"]["logger"][0]["init_args"]["name"] == "mnist_alpha0.0_seed0"


@pytest.mark.parametrize("flag, message", [
    ("--model.alpha=-1", "model.alpha must be >= 0"),
    ("--model.latent_dim=0", "model.latent_dim must be an integer >= 1"),
    ("--ckpt_path=nope/missing.ckpt", "--ckpt_path nope/missing.ckpt does not exist"),
])
def test_bad_values_fail_before_training_with_one_line(in_tmp, tmp_path, capsys, flag, message):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", "--config", BASE, *in_tmp, flag])
    assert message in str(exit_.value.code) and "\n" not in str(exit_.value.code)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.ckpt"))


@pytest.mark.parametrize("flag", ["--data.dataset=cifar", "--model.alpha=abc", "--model.alpah=1"])
def test_parser_refuses_unknown_values_and_keys(in_tmp, capsys, flag):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", "--config", BASE, *in_tmp, flag])
    assert exit_.value.code != 0
    # a parse error (stderr), or a UserError's one line (the exit message: data.dataset is checked
    # against the dataset registry when the data module is built)
    said = capsys.readouterr().err + str(exit_.value.code)
    assert flag.split("=")[0].lstrip("-").split(".")[-1] in said


class KeepWeights(Callback):
    """The weights in memory at the end of training, before anything reloads a checkpoint."""

    state: dict = {}

    def on_train_end(self, trainer, pl_module) -> None:
        KeepWeights.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


@pytest.mark.parametrize("overlay", [[], ["--config", str(ROOT / "configs/conv.yaml")]],
                         ids=["mlp", "conv"])
def test_checkpoint_round_trip_and_public_api(in_tmp, tmp_path, overlay):
    fit = run_lightning_cli(["fit", "--config", BASE, *overlay, *in_tmp, "--trainer.max_epochs=1",
                             "--trainer.limit_train_batches=5", "--trainer.limit_val_batches=2",
                             "--trainer.limit_test_batches=2", "--model.latent_dim=3",
                             "--trainer.callbacks+=tests.test_cli.KeepWeights"])
    (ckpt,) = (tmp_path / "runs").rglob("last.ckpt")
    model = ConsistencyVAE.load_from_checkpoint(ckpt, map_location="cpu")
    assert model.hparams.latent_dim == 3 and model.hparams.alpha == 1.0
    # the trained weights, bit for bit, against the ones in memory when training ended
    assert KeepWeights.state.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, KeepWeights.state[key], rtol=0, atol=0, equal_nan=True)
    x = torch.rand(4, 1, 28, 28)
    mu, logvar = model.encode(x)
    x_prime = model.decode(mu)
    assert mu.shape == logvar.shape == (4, 3) and x_prime.shape == (4, 1, 28, 28)
    assert 0 <= x_prime.min() and x_prime.max() <= 1
    # `test --ckpt_path` on the same checkpoint: the same computation as the fit's own test of the
    # same weights (one epoch: best = last), on the same machine, so the same numbers exactly
    test = run_lightning_cli(["test", "--config", BASE, *overlay, *in_tmp, "--model.latent_dim=3",
                              "--ckpt_path", str(ckpt), "--trainer.limit_test_batches=2"])
    fitted = {k: v.item() for k, v in fit.trainer.callback_metrics.items() if k.startswith("test/")}
    tested = {k: v.item() for k, v in test.trainer.callback_metrics.items() if k.startswith("test/")}
    assert {"test/elbo", "test/kl_consistency"} <= fitted.keys() and tested == fitted


def test_second_run_never_collides(in_tmp, tmp_path):
    for _ in range(2):
        cli_main(["fit", "--config", BASE, *in_tmp, "--trainer.max_steps=2",
                  "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1"])
    versions = sorted(p.name for p in (tmp_path / "runs/mnist_alpha1.0_seed0").iterdir())
    assert versions == ["version_0", "version_1"]
