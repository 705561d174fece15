"""A checkpoint written by release 0.1 (commit 672ae4f) still loads, evaluates and resumes.

The fixture is the ``last.ckpt`` of ``fit --config configs/mnist.yaml --data.subset=512
--trainer.max_epochs=2`` with 32 hidden units (629 kB, so it can live in the repository): the
default architecture and callbacks, only narrower. Users keep checkpoints for years; a change to
the module's buffers, hyper-parameters or callbacks that breaks them fails here.
"""

from pathlib import Path

import pytest
import torch

from consistency_vae.model import ConsistencyVAE

FIXTURE = Path(__file__).parent / "fixtures" / "mnist_alpha1_hidden32_v0.1.ckpt"
HIDDEN = ["--model.encoder.init_args.hidden_dims=[32]", "--model.decoder.init_args.hidden_dims=[32]"]


def test_release_0_1_checkpoint_loads_with_its_hyperparameters():
    model = ConsistencyVAE.load_from_checkpoint(FIXTURE, map_location="cpu")
    assert model.hparams.alpha == 1.0 and model.hparams.latent_dim == 2
    assert float(model.alpha) == 1.0
    assert model.encoder.net[0].out_features == 32  # the architecture came from the checkpoint
    saved = torch.load(FIXTURE, map_location="cpu", weights_only=True)["state_dict"]
    for name, tensor in model.state_dict().items():
        if name in saved:  # every saved weight arrives unchanged
            torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0, equal_nan=True, msg=name)


def test_release_0_1_checkpoint_evaluates(tmp_path, data_dir):
    from consistency_vae.evaluation.evaluate import evaluate_checkpoint

    results = evaluate_checkpoint(FIXTURE, tmp_path / "eval", data_dir=str(data_dir), subset=512,
                                  iwae_k=4, figures=False, progress=False)
    assert results["alpha"] == 1.0 and results["test_images"] == 512
    # two epochs on 512 images: barely trained, but a real ELBO (it is <= 0 and >= the
    # value of an untrained decoder, 784 * log(2) = 543.4 nats of Bernoulli cross-entropy)
    assert -784 * 0.6932 < results["elbo"] < 0
    assert (tmp_path / "eval" / "metrics.json").is_file()


@pytest.mark.slow
def test_release_0_1_checkpoint_resumes_training(tmp_path, data_dir):
    from tests import cli_runs

    code, log = cli_runs.run(tmp_path, "fit", "--config", cli_runs.BASE, *HIDDEN,
                             f"--data.data_dir={data_dir}", "--data.subset=512",
                             "--trainer.max_epochs=3", cli_runs.csv_only(), "--ckpt_path", str(FIXTURE))
    assert code == 0, log[-3000:]
    last = torch.load(next(tmp_path.glob("runs/*/version_*/checkpoints/last.ckpt")),
                      map_location="cpu", weights_only=True)
    assert last["epoch"] == 2  # epochs 0-1 came from the fixture, epoch 2 was trained here
