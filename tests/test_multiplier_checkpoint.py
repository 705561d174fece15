"""A multiplier rule given in Python is saved as its class_path and init_args, so the checkpoint
loads with weights_only=True and rebuilds the same rule (issue 20, item 11). It was saved as the
module itself, and torch's safe loading (evaluate without --allow_pickle) refused the file."""

import lightning
import pytest
import torch

from consistency_vae.datamodule import MNISTDataModule
from consistency_vae.errors import ConfigError
from consistency_vae.evaluation.evaluate import evaluate_checkpoint
from consistency_vae.model import ConsistencyVAE
from consistency_vae.multipliers import GECO, MultiplierRule, NuPI, rule_from_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
RULES = [GECO(rate=0.02, ema=0.9, alpha_min=1e-2, alpha_max=50.0), NuPI(k_i=0.01, k_p=0.5, nu=0.9)]


def train_and_save(rule: MultiplierRule, path, data_dir) -> ConsistencyVAE:
    """Four constrained steps on real MNIST, saved by Lightning with the data module's config."""
    torch.manual_seed(0)
    model = ConsistencyVAE(alpha_mode="constrained", kl_target=0.01, multiplier=rule)
    data = MNISTDataModule(data_dir=str(data_dir), subset=256, batch_size=64, eval_batch_size=256)
    trainer = lightning.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(path)
    return model


@pytest.mark.parametrize("rule", RULES, ids=lambda r: type(r).__name__)
def test_weights_only_loading_rebuilds_the_same_rule(rule, tmp_path, mnist_dir):
    path = tmp_path / "model.ckpt"
    trained = train_and_save(rule, path, mnist_dir)
    saved = torch.load(path, weights_only=True)["hyper_parameters"]["multiplier"]  # plain data
    assert saved == {"class_path": f"consistency_vae.multipliers.{type(rule).__name__}",
                     "init_args": rule.as_config()["init_args"]}
    loaded = ConsistencyVAE.load_from_checkpoint(path, weights_only=True)
    assert type(loaded.multiplier) is type(rule)
    assert loaded.multiplier.as_config() == rule.as_config()
    for key, value in trained.multiplier.state_dict().items():  # NuPI's xi: state, not a setting
        assert torch.equal(loaded.multiplier.state_dict()[key], value), key
    assert float(loaded.alpha) == float(trained.alpha) != 1.0  # the multiplier moved, and resumes
    assert loaded.hparams.multiplier == saved  # saved again as plain data, whatever loads it next


def test_evaluate_reads_it_without_allow_pickle(tmp_path, mnist_dir):
    path = tmp_path / "model.ckpt"
    train_and_save(RULES[0], path, mnist_dir)
    results = evaluate_checkpoint(path, tmp_path / "eval", iwae_k=2, iwae_images=10, figures=False,
                                  progress=False, quadrature_points=101)  # log p(x) not read here
    assert results["alpha_mode"] == "constrained" and results["elbo"] < 0


def test_the_documented_init_args_are_every_argument():
    assert GECO().as_config() == {"class_path": "consistency_vae.multipliers.GECO", "init_args": {
        "rate": 1e-3, "ema": 0.99, "alpha_min": 1e-3, "alpha_max": 1e3}}
    assert rule_from_config(NuPI(k_p=0.25).as_config()).as_config() == NuPI(k_p=0.25).as_config()


@pytest.mark.parametrize("class_path", ["torch.nn.Linear", "os.system", "no_such_module.Rule", ""])
def test_a_class_path_that_is_no_imported_rule_is_refused(class_path):
    with pytest.raises(ConfigError, match="is not an imported MultiplierRule"):
        rule_from_config({"class_path": class_path, "init_args": {}})


def test_a_rule_that_does_not_keep_its_arguments_says_so():
    class Forgetful(MultiplierRule):
        def __init__(self, gain: float = 1.0):
            super().__init__()

    with pytest.raises(TypeError, match=r"Forgetful must keep its __init__ arguments \['gain'\]"):
        ConsistencyVAE(alpha_mode="constrained", multiplier=Forgetful())
