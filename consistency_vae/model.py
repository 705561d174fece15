"""The LightningModule: a VAE trained on -ELBO + alpha * KL( q(z'|x') || q(z|x) ).

Design choices the paper leaves open, made explicit here:
- ``x'`` is the decoder's *mean* (sigmoid of the logits) at one sample ``z ~ q(z|x)``, the same
  sample that the ELBO uses, so the consistency term costs one extra encoder pass.
- Gradients flow through ``x'`` into the decoder by default (``consistency_grad_through_decoder``);
  with ``False``, ``x'`` is detached and only the encoder is asked to be consistent.
- Gradients flow into both posteriors of the KL, ``q(z'|x')`` and ``q(z|x)``.
- Terms are sums over pixels / latent dims, means over the batch, so ``alpha`` does not depend on
  the dataset size or batch size.
- ``alpha_mode: constrained`` treats alpha as a Lagrange multiplier for KL(z'||z) <= kl_target
  (see ``constraint.py``); alpha then lives in a buffer, so checkpoints keep and resume it.
"""

import os
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from lightning import LightningModule
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection

from consistency_vae import losses
from consistency_vae.constraint import dual_ascent_step
from consistency_vae.errors import ConfigError
from consistency_vae.networks import MLPDecoder, MLPEncoder

TERMS = ("loss", "recon", "kl", "kl_consistency", "elbo")
STAGES = ("val", "test")
TRAIN_NOISE, EVAL_NOISE = 0, 1  # first key of seeded_generator: training and evaluation streams

EncoderFactory = Callable[[int], nn.Module]  # latent_dim -> module returning (mu, logvar)
DecoderFactory = Callable[[int], nn.Module]  # latent_dim -> module returning logits


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; training stops before the bad step touches the weights."""


class ConsistencyVAE(LightningModule):
    """VAE with the consistency loss of "Towards Consistent Variational Auto-Encoding".

    Args:
        encoder: class (or partial) taking ``latent_dim``; in YAML, ``class_path`` + ``init_args``.
        decoder: likewise, returning Bernoulli logits.
        latent_dim: size of z. 2 as in the paper's figures.
        alpha: weight of KL(q(z'|x') || q(z|x)), >= 0. 0 is the plain VAE. In constrained mode,
            the multiplier's initial value.
        alpha_mode: ``fixed`` keeps alpha; ``constrained`` adapts it by dual ascent so that the
            (moving average of the) training KL(z'||z) stays <= ``kl_target``.
        kl_target: the constraint's epsilon, in nats (constrained mode only).
        alpha_lr: dual ascent step size for alpha (constrained mode only).
        constraint_ema: moving-average factor of the constraint estimate (constrained mode only).
        consistency_grad_through_decoder: let the consistency gradient reach the decoder via x'.
        lr: Adam learning rate.
    """

    def __init__(
        self,
        encoder: EncoderFactory = MLPEncoder,
        decoder: DecoderFactory = MLPDecoder,
        latent_dim: int = 2,
        alpha: float = 1.0,
        alpha_mode: Literal["fixed", "constrained"] = "fixed",
        kl_target: float = 1.0,
        alpha_lr: float = 0.01,
        constraint_ema: float = 0.99,
        consistency_grad_through_decoder: bool = True,
        lr: float = 1e-3,
    ):
        super().__init__()
        _check_hparams(latent_dim, alpha, alpha_mode, kl_target, alpha_lr, constraint_ema, lr)
        self.save_hyperparameters()  # under the CLI: the encoder/decoder class_path configs
        self.encoder = encoder(latent_dim)
        self.decoder = decoder(latent_dim)
        # alpha and the constraint estimate are state: saved in checkpoints, reduced by nobody.
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.register_buffer("constraint_avg", torch.tensor(float("nan")))
        # running sums of the training terms over the epoch (not saved: rebuilt every epoch)
        self.register_buffer("train_sums", torch.zeros(len(TERMS)), persistent=False)
        self.register_buffer("train_batches", torch.zeros(()), persistent=False)
        self.eval_metrics = nn.ModuleDict({
            stage: MetricCollection({t: MeanMetric() for t in TERMS}, prefix=f"{stage}/")
            for stage in STAGES
        })

    # --- public API -------------------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 1, 28, 28) in [0, 1] -> (mu, logvar), each (B, latent_dim)."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """(B, latent_dim) -> decoder mean x' in [0, 1], (B, 1, 28, 28)."""
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Every loss term per example, shape (B,) each, plus the latent statistics."""
        mu, logvar = self.encoder(x)  # (B, D)
        z = losses.reparameterize(mu, logvar, generator)  # (B, D)
        logits = self.decoder(z)  # (B, 1, 28, 28)
        recon = losses.bernoulli_nll(logits, x)
        kl = losses.kl_to_standard_normal(mu, logvar)
        x_prime = torch.sigmoid(logits)
        if not self.hparams.consistency_grad_through_decoder:
            x_prime = x_prime.detach()
        # The plain VAE still measures KL(z'||z), but needs no gradient of it.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._is_plain_vae):
            mu_prime, logvar_prime = self.encoder(x_prime)
            kl_consistency = losses.consistency_kl(mu_prime, logvar_prime, mu, logvar)
        return {"recon": recon, "kl": kl, "kl_consistency": kl_consistency,
                "elbo": -(recon + kl), "loss": recon + kl + self.alpha * kl_consistency,
                "mu": mu, "logvar": logvar, "mu_prime": mu_prime, "logvar_prime": logvar_prime}

    @property
    def _is_plain_vae(self) -> bool:
        return self.hparams.alpha_mode == "fixed" and self.hparams.alpha == 0

    # --- training ---------------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _ = batch
        # eps depends on (seed, step, rank) only, not on what drew from the global RNG before,
        # which Lightning does not restore on resume: a resumed run draws what an unbroken one would.
        seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
        out = self(x, seeded_generator(x.device, TRAIN_NOISE, seed, self.global_step, self.global_rank))
        terms = {t: out[t].mean() for t in TERMS}
        self._check_finite(terms)
        if self.hparams.alpha_mode == "constrained":
            self._update_alpha(terms["kl_consistency"].detach())
        # self.log costs ~0.5 ms a call on CPU, a tenth of a step of the 2-D MLP: sum the terms
        # in one tensor every step, and call self.log only every log_every_n_steps.
        self.train_sums += torch.stack([terms[t].detach() for t in TERMS])
        self.train_batches += 1
        if self.global_step % self.trainer.log_every_n_steps == 0:
            step_values = {f"train/{t}": v.detach() for t, v in terms.items()}
            if self.hparams.alpha_mode == "constrained":
                step_values |= {"train/alpha": self.alpha, "train/constraint": self.constraint_avg}
            self.log_dict(step_values, on_step=True, on_epoch=False)
        return terms["loss"]

    def on_train_epoch_start(self) -> None:
        self.train_sums.zero_()
        self.train_batches.zero_()

    def on_train_epoch_end(self) -> None:
        means = self.train_sums / self.train_batches.clamp(min=1)  # (len(TERMS),)
        self.log_dict({f"train/{t}_epoch": v for t, v in zip(TERMS, means, strict=True)},
                      on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/alpha_epoch", self.alpha, on_step=False, on_epoch=True)

    def _update_alpha(self, kl_consistency: Tensor) -> None:
        ema = self.hparams.constraint_ema
        avg = torch.where(self.constraint_avg.isnan(), kl_consistency,
                          ema * self.constraint_avg + (1 - ema) * kl_consistency)
        # New tensors, not in-place updates: this step's loss still needs the old alpha for backward.
        self.constraint_avg = avg
        self.alpha = dual_ascent_step(self.alpha, avg, self.hparams.kl_target, self.hparams.alpha_lr)

    def _check_finite(self, terms: dict[str, Tensor]) -> None:
        if not torch.isfinite(terms["loss"]):
            values = ", ".join(f"{t}={v.item():.4g}" for t, v in terms.items())
            raise NonFiniteLossError(
                f"non-finite loss at epoch {self.current_epoch}, global step {self.global_step}: "
                f"{values}. The weights are from the last good step; no checkpoint of this state "
                "is written. Lower model.lr or check the input data.")

    # --- validation and test ----------------------------------------------------------------
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def _eval_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, stage: str) -> None:
        x, _ = batch
        # Fixed noise per global batch: the evaluation sampler deals whole batches round-robin
        # (datamodule.UnpaddedDistributedSampler), so batch b holds the same images, and gets the
        # same eps, on 1 or N processes, in every run and after a resume.
        global_batch = batch_idx * self.trainer.world_size + self.global_rank
        out = self(x, seeded_generator(x.device, EVAL_NOISE, global_batch))
        metrics = self.eval_metrics[stage]
        for t in TERMS:
            metrics[t].update(out[t])  # per-example values: the mean is over the whole split
        for t in TERMS:  # the progress bar shows the two numbers under study
            self.log(f"{stage}/{t}", metrics[t], prog_bar=t in ("elbo", "kl_consistency"))

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, y = batch
        mu, logvar = self.encode(x)
        return {"mu": mu, "logvar": logvar, "label": y}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def seeded_generator(device: torch.device, *keys: int) -> torch.Generator:
    """A generator seeded from non-negative integer keys alone, hashed by numpy's SeedSequence
    (nearby keys give unrelated streams)."""
    seed = int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0])
    return torch.Generator(device=device).manual_seed(seed)


def _check_hparams(latent_dim, alpha, alpha_mode, kl_target, alpha_lr, constraint_ema, lr) -> None:
    """Fail before any work, naming the value and what is allowed."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise ConfigError(f"model.alpha must be a number >= 0, got {alpha!r}")
    checks = [
        (isinstance(latent_dim, int) and latent_dim >= 1, "model.latent_dim must be an integer >= 1",
         latent_dim),
        (alpha >= 0, "model.alpha must be >= 0 (0 is the plain VAE)", alpha),
        (alpha_mode in ("fixed", "constrained"), "model.alpha_mode must be 'fixed' or 'constrained'",
         alpha_mode),
        (kl_target > 0, "model.kl_target must be > 0 nats", kl_target),
        (alpha_lr > 0, "model.alpha_lr must be > 0", alpha_lr),
        (0 <= constraint_ema < 1, "model.constraint_ema must be in [0, 1)", constraint_ema),
        (lr > 0, "model.lr must be > 0", lr),
    ]
    for ok, message, value in checks:
        if not ok:
            raise ConfigError(f"{message}, got {value!r}")
