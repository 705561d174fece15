"""Callbacks and figures: what they log, where files go, eval mode and back."""

import csv
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import matplotlib.image
import numpy as np
import PIL.Image
import pytest
import torch
from lightning import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from torch.distributions import Normal, kl_divergence

from consistency_vae import callbacks, figures
from consistency_vae.datamodule import MNISTDataModule
from consistency_vae.model import ConsistencyVAE
from consistency_vae.noise import eval_noise


def read_png(path) -> np.ndarray:
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4) and min(image.shape[:2]) > 200
    assert image[..., :3].std() > 0.05  # not a blank canvas
    return image


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, data_dir):
    """Two tiny epochs on 300 real images with every callback; run from an empty folder."""
    root = tmp_path_factory.mktemp("fit")
    cwd = root / "cwd"
    cwd.mkdir()
    torch.manual_seed(0)
    model = ConsistencyVAE(latent_dim=3)
    dm = MNISTDataModule(data_dir=str(data_dir), subset=300, batch_size=50)
    trainer = Trainer(
        max_epochs=2, limit_train_batches=3, limit_val_batches=1, accelerator="cpu",
        logger=CSVLogger(root / "runs", name="tiny"), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[callbacks.TestSetConsistency(), callbacks.LatentScatter(every_n_epochs=1),
                   callbacks.ReconstructionGrid(), callbacks.PriorSamples()])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a machine shared with other jobs: two threads wait on each other
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(cwd)
            trainer.fit(model, datamodule=dm)
    finally:
        torch.set_num_threads(threads)
    return SimpleNamespace(trainer=trainer, model=model, dm=dm, cwd=cwd, log_dir=trainer.log_dir)


def test_test_set_consistency_is_logged_once_per_epoch(fitted):
    with open(f"{fitted.log_dir}/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["test/kl_consistency"]]
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(r["test/elbo"] for r in rows)
    # the last value is the final model's test KL(z'||z), computed here with torch.distributions
    model, (x, _) = fitted.model.eval(), (fitted.dm.test_set.images, None)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z = mu + (0.5 * logvar).exp() * eval_noise(0, len(x), 3)
        mu_p, logvar_p = model.encode(model.decode(z))
        kl = kl_divergence(Normal(mu_p, (0.5 * logvar_p).exp()), Normal(mu, (0.5 * logvar).exp()))
    assert float(rows[-1]["test/kl_consistency"]) == pytest.approx(kl.sum(-1).mean().item(), rel=1e-4)


def test_figures_land_in_the_run_folder_only(fitted):
    names = sorted(p.name for p in (Path(fitted.log_dir) / "figures").iterdir())
    assert names == ["latent_drift_epoch01.png", "latent_drift_epoch02.png",  # epochs from 1
                     "prior_samples_epoch02.png", "reconstructions_epoch02.png"]
    for name in names:
        read_png(f"{fitted.log_dir}/figures/{name}")
    assert list(fitted.cwd.iterdir()) == []  # nothing in the working directory


@pytest.mark.parametrize("callback", [
    callbacks.TestSetConsistency(), callbacks.LatentScatter(), callbacks.ReconstructionGrid(),
    callbacks.PriorSamples()], ids=lambda c: type(c).__name__)
def test_callbacks_run_in_eval_mode_without_grad_and_restore_train_mode(fitted, callback, tmp_path):
    model = fitted.model.train()
    seen = []
    hook = model.decoder.register_forward_hook(
        lambda *_: seen.append((model.training, torch.is_grad_enabled())))
    trainer = SimpleNamespace(datamodule=fitted.dm, loggers=[], global_step=0,
                              default_root_dir=str(tmp_path), current_epoch=1, max_epochs=5)
    with mock.patch.object(model, "log") as log:
        if isinstance(callback, callbacks.TestSetConsistency):
            callback.on_train_epoch_end(trainer, model)
            assert {c.args[0] for c in log.call_args_list} == {"test/kl_consistency", "test/elbo"}
        else:
            callback.on_train_end(trainer, model)
            (png,) = (tmp_path / "figures").iterdir()
            read_png(png)
    hook.remove()
    assert seen and set(seen) == {(False, False)}
    assert model.training


def test_log_figure_sends_to_wandb_and_tensorboard_and_saves_png(tmp_path):
    wandb_logger, tb_logger = mock.Mock(spec=WandbLogger), mock.Mock(spec=TensorBoardLogger)
    tb_logger.experiment = mock.Mock()
    wandb_logger.save_dir = str(tmp_path)  # the first logger names the run folder
    trainer = SimpleNamespace(loggers=[wandb_logger, tb_logger], default_root_dir="elsewhere",
                              global_step=7)
    images = torch.rand(16, 28, 28)
    fig = figures.image_grid_figure(images, ncols=4, title="t")
    path = callbacks.log_figure(trainer, "samples", fig, epoch=3)
    assert path == tmp_path / "figures" / "samples_epoch03.png"
    read_png(path)
    kwargs = wandb_logger.log_image.call_args.kwargs
    assert kwargs["key"] == "figures/samples" and kwargs["step"] == 7
    (image,) = kwargs["images"]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    # drawn once for both: the PNG holds the pixels W&B got, those savefig writes of the same figure
    figures.image_grid_figure(images, ncols=4, title="t").savefig(tmp_path / "savefig.png")
    png = np.asarray(PIL.Image.open(path))
    np.testing.assert_array_equal(png[..., :3], image)
    np.testing.assert_array_equal(png, np.asarray(PIL.Image.open(tmp_path / "savefig.png")))  # same machine
    tb_logger.experiment.add_figure.assert_called_once_with("figures/samples", fig, global_step=7,
                                                            close=False)


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_latent_drift_figure_draws_two_ellipses_and_an_arrow_per_image(dim):
    torch.manual_seed(0)
    all_mu = torch.randn(500, dim) * torch.linspace(0.1, 2.0, dim)  # the last dims vary most
    mu, logvar = all_mu[:3], torch.full((3, dim), -2.0)
    fig = figures.latent_drift_figure(mu, logvar, mu + 0.1, logvar - 0.5, torch.rand(3),
                                      torch.tensor([0, 1, 2]), all_mu, torch.randint(0, 10, (500,)),
                                      *figures.projection_dims(all_mu), title="test",
                                      images=torch.rand(3, 28, 28), images_prime=torch.rand(3, 28, 28))
    *panels, right = fig.axes  # one panel per image, then all test means
    assert len(panels) == 3
    for panel in panels:  # two ellipses, one arrow, x and x' thumbnails
        assert len(panel.patches) == 2
        assert sum(1 for t in panel.texts if t.arrow_patch is not None) == 1
        assert len(panel.child_axes) == 2
    assert panels[0].get_legend() is not None and right.get_legend() is not None
    if dim == 5:  # projected on the two highest-variance dims, and the title says so
        assert figures.projection_dims(all_mu)[0] == (4, 3)
        assert "z4" in right.get_xlabel() and "largest variance" in fig._suptitle.get_text()
    assert figures.figure_to_array(fig).shape[2] == 3
