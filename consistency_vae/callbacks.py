"""Callbacks that measure and draw what the paper shows, during ``fit``.

Each does one job, on rank zero only, under ``torch.no_grad()`` with the model in eval mode (and
back to train mode after). They read the held-out test set that ``MNISTDataModule.setup`` already
holds in memory. Figures go to the loggers that can show them (W&B, TensorBoard) and, always,
to ``<run folder>/figures/<name>_epoch<NN>.png``; never to the working directory. Epochs are
counted from 1 wherever a reader sees them (file names, titles, captions): the figure drawn after
the last of 25 epochs is ``latent_drift_epoch25.png``, "epoch 25 of 25". (Checkpoint names keep
Lightning's 0-based ``epoch``.)

The ``*_figure`` builders (model + images -> Figure) are shared with ``evaluate``.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.figure import Figure
from torch import Tensor, nn

from consistency_vae import figures
from consistency_vae.errors import ConfigError
from consistency_vae.evaluation.metrics import LossTerms
from consistency_vae.noise import eval_noise, eval_noise_at, prior_noise


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside; the module's previous mode is restored after."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def encode_means(model: nn.Module, images: Tensor, batch_size: int = 1000) -> Tensor:
    """Posterior means mu(x) of all images, (N, D), computed in batches on the model's device."""
    device = next(model.parameters()).device
    return torch.cat([model.encode(images[i:i + batch_size].to(device))[0]
                      for i in range(0, len(images), batch_size)])


def example_indices(labels: Tensor, n_images: int = 3, one_per_class: bool = False) -> list[int]:
    """The first test image of each of the first ``n_images`` classes (of all, if one_per_class)."""
    classes = sorted(set(labels.tolist()))
    chosen = classes if one_per_class else classes[:n_images]
    return [int((labels == c).nonzero()[0]) for c in chosen]


# --- figure builders: model + data -> Figure (no_grad and eval mode are the caller's) --------
def latent_drift_data(model: nn.Module, images: Tensor, labels: Tensor, n_images: int = 3,
                      one_per_class: bool = False, seed: int = 0) -> dict:
    """What Fig. 2 draws, as ``figures.draw_latent_drift``'s keyword arguments: the chosen test
    images' posteriors, their re-encodings, KL(z'||z) and thumbnails, all test means (CPU)."""
    device = next(model.parameters()).device
    idx = example_indices(labels, n_images, one_per_class)
    x = images[idx].to(device)
    out = model(x, eval_noise_at(idx, model.hparams.latent_dim, seed))  # the same z as evaluate's
    all_mu = encode_means(model, images).cpu()
    dims, how = figures.projection_dims(all_mu)
    return {"mu": out["mu"].cpu(), "logvar": out["logvar"].cpu(), "mu_prime": out["mu_prime"].cpu(),
            "logvar_prime": out["logvar_prime"].cpu(), "kl_consistency": out["kl_consistency"].cpu(),
            "labels": labels[idx].cpu(), "all_mu": all_mu, "all_labels": labels.cpu(), "dims": dims,
            "how": how, "images": x.cpu(), "images_prime": out["x_prime"].cpu()}


def latent_drift_figure(model: nn.Module, images: Tensor, labels: Tensor, n_images: int = 3,
                        one_per_class: bool = False, seed: int = 0,
                        class_names: Sequence[str] | None = None, title: str = "") -> Figure:
    """Fig. 2 of the paper: q(z|x) against q(z'|x') for a few test images, plus all test means.

    class_names: the datamodule's (registry or the user's files); None labels classes by number."""
    data = latent_drift_data(model, images, labels, n_images, one_per_class, seed)
    return figures.latent_drift_figure(**data, class_names=class_names, title=title)


def reconstruction_figure(model: nn.Module, images: Tensor, labels: Tensor, seed: int = 0,
                          title: str = "") -> Figure:
    """One test image per class: x, the decoder mean at mu(x), and x' (decoded z ~ q(z|x))."""
    device = next(model.parameters()).device
    idx = example_indices(labels, one_per_class=True)
    x = images[idx].to(device)
    x_prime = model(x, eval_noise_at(idx, model.hparams.latent_dim, seed))["x_prime"]
    at_mean = model.decode(model.encode(x)[0])
    return figures.image_rows_figure([x.cpu(), at_mean.cpu(), x_prime.cpu()],
                                     ["x", "decoded mu(x)", "x' (decoded z)"], title)


def prior_samples_figure(model: nn.Module, n: int = 64, seed: int = 0, title: str = "") -> Figure:
    """Decoder means at z ~ N(0, I), from a fixed seed so epochs are comparable."""
    device = next(model.parameters()).device
    z = prior_noise(n, model.hparams.latent_dim, seed).to(device)  # not the test images' eps
    return figures.image_grid_figure(model.decode(z).cpu(), ncols=8, title=title)


# --- routing a figure to whoever can show it ----------------------------------------------------
def run_dir(trainer: Trainer) -> Path:
    """``trainer.log_dir`` without its broadcast, which would hang DDP when called on rank zero
    only: the first logger's folder (runs/NAME/version_N for CSV/TensorBoard), else the root."""
    first = trainer.loggers[0] if trainer.loggers else None
    if isinstance(first, CSVLogger | TensorBoardLogger):
        return Path(first.log_dir)
    return Path(getattr(first, "save_dir", None) or trainer.default_root_dir)


def epochs_done(trainer: Trainer) -> int:
    """Whole epochs trained, counted from 1, at ``on_train_end``: the fit loop has already moved
    ``current_epoch`` past the last finished one (at least 1, for a run stopped in its first)."""
    return max(trainer.current_epoch, 1)


def epoch_words(epoch: int, max_epochs: int | None) -> str:
    """``epoch 3 of 25``; just ``epoch 3`` when the run has no epoch limit (max_epochs -1/None)."""
    return f"epoch {epoch} of {max_epochs}" if max_epochs and max_epochs > 0 else f"epoch {epoch}"


def setting_words(hparams, alpha: float) -> str:
    """``alpha=1``, or in constrained mode ``constrained, kl_target = 1.3, alpha = 0.514`` (the
    multiplier's value when drawn: it moves)."""
    if hparams.get("alpha_mode") == "constrained":
        return f"constrained, kl_target = {hparams.get('kl_target'):g}, alpha = {alpha:.3g}"
    return f"alpha={alpha:.3g}"


def log_figure(trainer: Trainer, name: str, fig: Figure, epoch: int) -> Path:
    """Save ``fig`` as ``<run folder>/figures/<name>_epoch<NN>.png`` and send it to every
    image-capable logger (W&B as ``wandb.Image``, TensorBoard via ``add_figure``). epoch: the
    epoch just finished, counted from 1 (NN, and the caption "epoch 3 of 25").

    The PNG is written even when a logger shows the figure: the default config's WandbLogger may
    be offline or disabled, and the run folder should hold the figures either way (a few files,
    as figures are drawn at the end of training by default). Returns the PNG path. The figure is
    not closed here (the caller's).
    """
    caption = epoch_words(epoch, getattr(trainer, "max_epochs", None))
    pixels = figures.render(fig)  # drawn once, for the PNG and W&B alike (savefig would draw again)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=f"figures/{name}", images=[pixels[..., :3]],
                             step=trainer.global_step, caption=[caption])
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(f"figures/{name}", fig, global_step=trainer.global_step,
                                         close=False)
    folder = run_dir(trainer) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_epoch{epoch:02d}.png"
    figures.write_png(pixels, path, dpi=fig.dpi)
    return path


def _test_data(trainer: Trainer) -> tuple[Tensor, Tensor]:
    test_set = getattr(trainer.datamodule, "test_set", None)
    if test_set is None:
        raise ConfigError("these callbacks read trainer.datamodule.test_set: use "
                          "consistency_vae.datamodule.MNISTDataModule, or drop them from trainer.callbacks")
    return test_set.images, test_set.labels


class TestSetConsistency(Callback):
    """After every training epoch: the test set's KL(z'||z) and ELBO, the paper's Fig. 3a.

    Logged as ``test/kl_consistency`` and ``test/elbo``. The z of each image comes from a fixed
    seed (``noise.eval_noise``, as in ``trainer.test`` and ``evaluate``), so the curve moves only
    because the model does, and its last point is the number those report for the same weights.
    """

    __test__ = False  # not a pytest class, despite the name

    def __init__(self, max_images: int | None = None, batch_size: int = 1000, seed: int = 0):
        self.max_images, self.batch_size, self.seed = max_images, batch_size, seed

    @rank_zero_only
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        images, _ = _test_data(trainer)
        images = images[: self.max_images]
        # Rank zero alone holds the whole test set here: a synced compute() would wait for the
        # other ranks, which never call it (a DDP deadlock).
        metric = LossTerms(sync_on_compute=False).to(pl_module.device)
        with eval_mode(pl_module):
            for i in range(0, len(images), self.batch_size):
                x = images[i:i + self.batch_size].to(pl_module.device)
                metric.update(pl_module(x, eval_noise(i, len(x), pl_module.hparams.latent_dim, self.seed)))
        means = metric.compute()
        for name in ("kl_consistency", "elbo"):
            pl_module.log(f"test/{name}", means[name].float(), on_step=False, on_epoch=True,
                          rank_zero_only=True)


class _FigureCallback(Callback):
    """Draws at the end of training, and every ``every_n_epochs`` epochs if that is > 0."""

    name = "figure"

    def __init__(self, every_n_epochs: int = 0):
        if every_n_epochs < 0:
            raise ConfigError(f"every_n_epochs must be >= 0 (0: only at the end), got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs

    def make_figure(self, pl_module: LightningModule, images: Tensor, labels: Tensor,
                    class_names: Sequence[str] | None, title: str) -> Figure:
        raise NotImplementedError

    def draw(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        """Draw and log the figure of ``pl_module`` as it is now (the training hooks call it; so does
        a pack for each member at its end). epoch: the one just finished, counted from 1."""
        images, labels = _test_data(trainer)
        dataset = getattr(trainer.datamodule, "hparams", {}).get("dataset", "mnist")
        title = (f"{dataset}, {setting_words(pl_module.hparams, float(pl_module.alpha))}, "
                 f"{epoch_words(epoch, trainer.max_epochs)}")
        with eval_mode(pl_module):
            fig = self.make_figure(pl_module, images, labels,
                                   getattr(trainer.datamodule, "class_names", None), title)
        log_figure(trainer, self.name, fig, epoch)
        fig.clf()  # frees the artists now; Figure objects are never registered with pyplot

    @rank_zero_only
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0 and not last:
            self.draw(trainer, pl_module, epoch + 1)  # current_epoch counts from 0

    @rank_zero_only
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.draw(trainer, pl_module, epochs_done(trainer))


class LatentScatter(_FigureCallback):
    """Fig. 2: q(z|x) vs q(z'|x') for ``n_images`` test images (or one per class), and all test
    means by class. By default only at the end of training (it encodes the whole test set)."""

    name = "latent_drift"

    def __init__(self, every_n_epochs: int = 0, n_images: int = 3, one_per_class: bool = False,
                 seed: int = 0):
        super().__init__(every_n_epochs)
        self.n_images, self.one_per_class, self.seed = n_images, one_per_class, seed

    def make_figure(self, pl_module, images, labels, class_names, title):
        return latent_drift_figure(pl_module, images, labels, self.n_images, self.one_per_class,
                                   self.seed, class_names, title)


class ReconstructionGrid(_FigureCallback):
    """One test image per class against its reconstructions."""

    name = "reconstructions"

    def make_figure(self, pl_module, images, labels, class_names, title):
        return reconstruction_figure(pl_module, images, labels, title=f"Reconstructions: {title}")


class PriorSamples(_FigureCallback):
    """Decoder means at ``n`` fixed draws from the prior N(0, I)."""

    name = "prior_samples"

    def __init__(self, every_n_epochs: int = 0, n: int = 64, seed: int = 0):
        super().__init__(every_n_epochs)
        self.n, self.seed = n, seed

    def make_figure(self, pl_module, images, labels, class_names, title):
        return prior_samples_figure(pl_module, self.n, self.seed, title=f"Prior samples: {title}")
