"""The LightningModule: a VAE trained on -ELBO + alpha * KL( q(z'|x') || q(z|x) ).

Design choices the paper leaves open, made explicit here:
- ``x'`` is the decoder's *mean* (sigmoid of the logits) at one sample ``z ~ q(z|x)``, the same
  sample that the ELBO uses, so the consistency term costs one extra encoder pass.
- Gradients flow into both posteriors of the KL, and through ``x'`` into the decoder unless
  ``consistency_grad_through_decoder`` is False (then only the encoder is asked to be consistent).
- Terms are sums over pixels / latent dims, means over the batch, so ``alpha`` does not depend on
  the dataset size or batch size.
- ``alpha_mode: constrained`` treats alpha as a Lagrange multiplier for KL(z'||z) <= kl_target
  (see ``constraint.py``); alpha then lives in a buffer, so checkpoints keep and resume it. Under
  DDP the update uses the constraint averaged over all ranks, so alpha is the same on every rank.
- ``alpha_mode: fixed``: the hyper-parameter is the weight, never a checkpoint's (``resume_state.py``).
- Checkpoints are chosen by ``val/selection``, which does not move with alpha (``constraint.py``).
- Evaluation noise is ``noise.eval_noise``: one eps row per image, whatever the batching.
- On CUDA a training step's forward and backward are one replayed CUDA graph (``step_graph.py``).
"""

import os
from collections.abc import Callable
from typing import Literal

import torch
from lightning import LightningModule
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection

from consistency_vae import guards, losses, resume_state, schedules, step_graph
from consistency_vae.constraint import selection_criterion
from consistency_vae.divergences import ConsistencyDivergence, ForwardKL
from consistency_vae.guards import NonFiniteLossError
from consistency_vae.multipliers import MultiplierRule, model_rule
from consistency_vae.networks import MNIST_SHAPE, ImageShape, MLPDecoder, MLPEncoder
from consistency_vae.noise import eval_noise, first_eval_row, train_noise

TERMS = ("loss", "recon", "kl", "kl_consistency", "elbo")
KL_C = TERMS.index("kl_consistency")
STAGES = ("val", "test")

# (latent_dim, image_shape) -> module returning (mu, logvar), or Bernoulli logits (B, C, H, W)
EncoderFactory = Callable[[int, ImageShape], nn.Module]
DecoderFactory = Callable[[int, ImageShape], nn.Module]
__all__ = ["ConsistencyVAE", "NonFiniteLossError"]  # the error's old home, still importable


class ConsistencyVAE(LightningModule):
    """VAE with the consistency loss of "Towards Consistent Variational Auto-Encoding".

    Args:
        encoder: class (or partial) taking ``latent_dim, image_shape``; in YAML, class_path + init_args.
        decoder: likewise, returning Bernoulli logits.
        latent_dim: size of z. 2 as in the paper's figures.
        alpha: weight of KL(q(z'|x') || q(z|x)), >= 0. 0 is the plain VAE. In constrained mode,
            the multiplier's initial value.
        alpha_mode: ``fixed`` keeps alpha; ``constrained`` adapts it by dual ascent so that the
            (moving average of the) training KL(z'||z) stays <= ``kl_target``.
        kl_target: the constraint's epsilon, in nats (constrained mode only).
        alpha_lr: dual ascent step size for alpha (constrained mode, default ``multiplier`` only).
        constraint_ema: moving-average factor of the constraint estimate (likewise).
        consistency_grad_through_decoder: let the consistency gradient reach the decoder via x'.
        lr: Adam learning rate.
        lr_schedule: ``constant`` (the paper's) or ``cosine``, annealed to 0 over the run (``schedules.py``).
        image_shape: (C, H, W) of the images; under the CLI, the data's (linked in training_cli.py).
        divergence: the consistency term that is trained (``divergences.py``); None is the paper's
            KL(z'||z), which is logged, and constrained in constrained mode, whatever is trained.
        multiplier: how alpha moves in constrained mode (``multipliers.py``: DualAscent, GECO,
            NuPI); None is ``DualAscent(step=alpha_lr, ema=constraint_ema)``.
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
        lr_schedule: Literal["constant", "cosine"] = "constant",
        image_shape: ImageShape = MNIST_SHAPE,
        divergence: ConsistencyDivergence | None = None,
        multiplier: MultiplierRule | None = None,
    ):
        super().__init__()
        guards.check_hparams(latent_dim, alpha, alpha_mode, kl_target, alpha_lr, constraint_ema, lr,
                             lr_schedule)
        # a rule is saved as its class_path and init_args (plain data: weights_only loading works)
        rule, multiplier = model_rule(multiplier, alpha_mode, alpha_lr, constraint_ema)
        self.save_hyperparameters()  # under the CLI: the encoder/decoder class_path configs
        self.encoder = encoder(latent_dim, tuple(image_shape))
        self.decoder = decoder(latent_dim, tuple(image_shape))
        self.divergence = divergence or ForwardKL()
        # One image: Lightning's model summary then counts FLOPs (a column of zeros without it).
        self.example_input_array = torch.zeros(1, *image_shape)
        self.multiplier = rule  # None in fixed mode, which runs no rule
        # alpha and the constraint estimate are state, saved in checkpoints. They are buffers, which
        # DDP broadcasts from rank 0 before every forward: harmless, as every rank computes the same
        # values (the constraint is all-reduced first, see training_step).
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.register_buffer("constraint_avg", torch.tensor(float("nan")))
        # Plain tensors, not buffers (DDP would overwrite them with rank 0's): the epoch's sums of
        # TERMS and its batch count (len(TERMS) + 1,), and non-finite steps not yet reported ().
        self._train_sums, self._bad_steps = None, None
        self._graph_step: step_graph.GraphStep | None = None  # on CUDA, during fit: step_graph.py
        self._weights_epoch: int | None = None  # the epoch these weights finished (labels a test row)
        self.eval_metrics = nn.ModuleDict({stage: MetricCollection({t: MeanMetric() for t in TERMS},
                                                                  prefix=f"{stage}/") for stage in STAGES})

    # --- public API -------------------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) in [0, 1] -> (mu, logvar), each (B, latent_dim)."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """(B, latent_dim) -> decoder mean x' in [0, 1], (B, C, H, W)."""
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: Tensor, noise: Tensor | torch.Generator | None = None) -> dict[str, Tensor]:
        """Every loss term per example, shape (B,) each, plus the latent statistics and x'.

        ``noise``: the eps of z = mu + sigma * eps, either given, (B, latent_dim) (evaluation:
        ``noise.eval_noise`` rows of these images), or drawn from a generator (training) or from
        the global RNG (None). Training, evaluation, callbacks and ``evaluate`` all use this forward.
        """
        mu, logvar = self.encoder(x)  # (B, D)
        z = losses.reparameterize(mu, logvar, noise)  # (B, D)
        logits = self.decoder(z)  # (B, C, H, W)
        recon = losses.bernoulli_nll(logits, x)
        kl = losses.kl_to_standard_normal(mu, logvar)
        x_prime = torch.sigmoid(logits)
        if not self.hparams.consistency_grad_through_decoder:
            x_prime = x_prime.detach()
        # The plain VAE still measures KL(z'||z), but needs no gradient of it.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._is_plain_vae):
            mu_prime, logvar_prime = self.encoder(x_prime)
            kl_consistency = losses.consistency_kl(mu_prime, logvar_prime, mu, logvar)
            # the trained term: the same tensor for the paper's KL, else one more (B,) computation
            trained = (kl_consistency if type(self.divergence) is ForwardKL
                       else self.divergence(mu_prime, logvar_prime, mu, logvar))
        return {"recon": recon, "kl": kl, "kl_consistency": kl_consistency, "divergence": trained,
                "elbo": -(recon + kl), "loss": recon + kl + self.alpha.clone() * trained,  # see _update_alpha
                "mu": mu, "logvar": logvar, "mu_prime": mu_prime, "logvar_prime": logvar_prime,
                "x_prime": x_prime}

    @property
    def _fitting(self) -> bool:
        return self._trainer is not None and self._trainer.state.fn == TrainerFn.FITTING

    @property
    def _is_plain_vae(self) -> bool:
        return self.hparams.alpha_mode == "fixed" and self.hparams.alpha == 0

    # --- training ---------------------------------------------------------------------------
    def on_train_start(self) -> None:
        schedules.check_resumed_length(self)
        self._bad_steps = torch.zeros((), device=self.device)
        # also here: a run resumed mid-epoch (SIGTERM checkpoint) gets no on_train_epoch_start
        self._train_sums = torch.zeros(len(TERMS) + 1, device=self.device)
        self._graph_step = step_graph.for_fit(self, self._step_terms, self.trainer)

    def on_train_end(self) -> None:
        self._graph_step = None

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, _ = batch
        # eps depends on (seed, step, rank) only, not on what drew from the global RNG before,
        # which Lightning does not restore on resume: a resumed run draws what an unbroken one would.
        seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
        step, rank = self.global_step, self.global_rank
        noise = train_noise(len(x), self.hparams.latent_dim, seed, step, rank, x.device)
        # the graph step runs the backward too (step_graph.py); else Lightning runs it, on loss
        loss, values = (self._graph_step or self._step_terms)(x, noise)
        terms = dict(zip(TERMS, values, strict=True))
        self._bad_steps = self._bad_steps + (~values.isfinite().all()).float()  # on the device: no sync
        every = self._finite_check_every()
        check = every > 0 and (step + 1) % every == 0
        constrained, world_size = self.hparams.alpha_mode == "constrained", self.trainer.world_size
        if constrained or (check and world_size > 1):
            # One small collective: [KL(z'||z), non-finite steps] summed over ranks. Every rank then
            # updates alpha from the same mean constraint, and stops at the same step (a rank that
            # raised alone would leave the others waiting in the gradient all-reduce forever).
            packet = guards.sum_over_ranks(torch.stack([values[KL_C], self._bad_steps]), world_size)
            bad_total, constraint = packet[1], packet[0] / world_size
        else:
            bad_total, constraint = self._bad_steps, values[KL_C]
        if check:
            self._raise_if_nonfinite(bad_total, every, terms)
        if constrained:
            self._update_alpha(constraint)
        # self.log costs ~0.5 ms a call on CPU (a tenth of a step): sum the terms every step, log only
        # where Lightning writes to the loggers (global_step % N wrote values up to N - 1 steps old).
        self._train_sums = self._train_sums + torch.cat([values, values.new_ones(1)])
        if self.trainer._logger_connector.should_update_logs:
            step_values = {f"train/{t}": v for t, v in zip(TERMS, values, strict=True)}
            if constrained:
                step_values |= {"train/alpha": self.alpha, "train/constraint": self.constraint_avg}
            self.log_dict(step_values, on_step=True, on_epoch=False)
        return {"loss": loss, "terms": values}  # terms: this rank's, for callbacks

    def _step_terms(self, x: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """A training step's forward: the batch's mean loss, and every term's mean (len(TERMS),)."""
        out = self(x, noise)
        means = {t: out[t].mean() for t in TERMS}
        return means["loss"], torch.stack([m.detach() for m in means.values()])

    def backward(self, loss: Tensor, *args, **kwargs) -> None:
        if self._graph_step is None:  # else the step has written this step's gradients already
            super().backward(loss, *args, **kwargs)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        if self._graph_step is None:  # else the gradients stay in the storage that the graph writes
            super().optimizer_zero_grad(epoch, batch_idx, optimizer)

    def on_train_epoch_start(self) -> None:
        self._train_sums = torch.zeros(len(TERMS) + 1, device=self.device)

    def on_train_epoch_end(self) -> None:
        # Means over every batch of every rank: sums and counts reduced, then divided.
        packet = guards.sum_over_ranks(torch.cat([self._train_sums, self._bad_steps.view(1)]),
                                       self.trainer.world_size)
        self._raise_if_nonfinite(packet[-1], self._finite_check_every())
        means = packet[:len(TERMS)] / packet[len(TERMS)].clamp(min=1)  # (len(TERMS),)
        # Identical on every rank already; sync_dist (a mean of equal values, exact) only keeps
        # Lightning from warning about unsynced epoch-level logs.
        self.log_dict({f"train/{t}_epoch": v for t, v in zip(TERMS, means, strict=True)},
                      on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/alpha_epoch", self.alpha, on_step=False, on_epoch=True, sync_dist=True)
        self._weights_epoch = self.current_epoch

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[resume_state.INITIAL_ALPHA] = float(self.hparams.alpha)  # see resume_state
        # Between two checks (on a GPU) a non-finite step may be pending: never save its state.
        if self._bad_steps is not None and self._fitting:
            self._raise_if_nonfinite(guards.sum_over_ranks(self._bad_steps.clone(), self.trainer.world_size),
                                     self._finite_check_every())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._weights_epoch = checkpoint.get("epoch")
        resume_state.apply(self, checkpoint, fitting=self._fitting)  # what the checkpoint keeps, what not

    def _update_alpha(self, kl_consistency: Tensor) -> None:
        # In place, as a step's CUDA graph reads alpha where it was recorded (step_graph.py); the
        # loss, whose backward Lightning runs after this, holds a copy of the step's alpha.
        alpha, avg = self.multiplier(self.alpha, self.constraint_avg, kl_consistency, self.hparams.kl_target)
        self.alpha.copy_(alpha)
        self.constraint_avg.copy_(avg)

    def _finite_check_every(self) -> int:  # a method: tests/test_model_steps.py forces a GPU's rule
        return guards.check_every(self.device, self.trainer.log_every_n_steps)

    def _raise_if_nonfinite(self, bad_total: Tensor, every: int,
                            terms: dict[str, Tensor] | None = None) -> None:
        guards.raise_if_nonfinite(bad_total, every, terms, bad_here=self._bad_steps, epoch=self.current_epoch,
                                  step=self.global_step, rank=self.global_rank,
                                  world_size=self.trainer.world_size)

    # --- validation and test ----------------------------------------------------------------
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def _eval_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, stage: str) -> None:
        x, _ = batch
        # One eps row per image, the same as evaluate's and the callbacks' (noise.eval_noise).
        loader = self.trainer.test_dataloaders if stage == "test" else self.trainer.val_dataloaders
        start = first_eval_row(loader, stage, batch_idx, self.trainer.world_size, self.global_rank)
        out = self(x, eval_noise(start, len(x), self.hparams.latent_dim))
        metrics = self.eval_metrics[stage]
        for t in TERMS:
            metrics[t].update(out[t])  # per-example values: the mean is over the whole split
        for t in TERMS:  # the progress bar shows the two numbers under study
            self.log(f"{stage}/{t}", metrics[t], prog_bar=t in ("elbo", "kl_consistency"))

    def on_validation_epoch_end(self) -> None:
        # The checkpoint criterion (constraint.selection_criterion): it does not move with alpha.
        val = self.eval_metrics["val"]
        if val["loss"].update_count == 0:
            return
        self.log("val/selection", selection_criterion(
            val["elbo"].compute(), val["kl_consistency"].compute(), val["loss"].compute(),
            self.hparams.alpha_mode, self.hparams.kl_target))

    def on_test_epoch_end(self) -> None:
        # the test row names its weights' epoch (after fit the trainer's is one past the last)
        if self._weights_epoch is not None:
            self.log("epoch", self._weights_epoch)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, y = batch
        mu, logvar = self.encode(x)
        return {"mu": mu, "logvar": logvar, "label": y}

    def configure_optimizers(self) -> dict:
        return schedules.adam(self.parameters(), self.hparams.lr, self.hparams.lr_schedule, self.trainer)
