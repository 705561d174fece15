"""What the model refuses, and how every DDP rank refuses it alike: hyper-parameters out of range
(before any work), a non-finite loss (during training; the check and its message), and the
one-collective sum over ranks that keeps the ranks in step. Kept out of model.py, which holds the
maths and the Lightning hooks."""

import sys

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import Tensor

from consistency_vae.errors import ConfigError
from consistency_vae.schedules import SCHEDULES


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; training stops on every rank. On a CPU, before the bad step
    touches the weights; on a GPU, at the next check (see ``check_every``)."""


def check_every(device: torch.device, log_every_n_steps: int) -> int:
    """Training steps between non-finite checks. Reading a device flag on the host is free on a
    CPU, so every step there; on a GPU it stalls the queue, so only at the steps where Lightning
    syncs anyway to log (log_every_n_steps; 0: never), at epoch ends and before each checkpoint."""
    return 1 if device.type == "cpu" else log_every_n_steps


def sum_over_ranks(tensor: Tensor, world_size: int) -> Tensor:
    """Sum over DDP ranks, in place (a no-op on one process); every rank gets the same bits.
    A bare all_reduce: Lightning's strategy.reduce adds a barrier, a host sync on a GPU."""
    if world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor


def raise_if_nonfinite(bad_total: Tensor, every: int, terms: dict[str, Tensor] | None, *,
                       bad_here: Tensor, epoch: int, step: int, rank: int, world_size: int) -> None:
    """Raise NonFiniteLossError on every rank alike if any rank saw a non-finite loss since the
    last check (``bad_total`` is already summed over ranks; ``bad_here`` is this rank's count).
    One host sync, and a second one only when raising."""
    if not bool(bad_total > 0):
        return
    mine = bool(bad_here > 0)
    where = f"epoch {epoch}, global step {step}"
    if every == 1:
        when, kept = f"at {where}", "The weights are from the last good step"
    else:  # on a GPU, where a check per step would stall the device queue
        checked = f"checked every {every} steps" if every else "checked at epoch ends"
        when, kept = f"in the steps up to {where} ({checked})", "The weights may hold those steps"
    if world_size > 1:
        when += (f" on rank {rank} of {world_size}" if mine
                 else f": on another rank (this is rank {rank}, whose loss was finite)")
    values = ""
    if mine and terms is not None and every == 1:
        values = ": " + ", ".join(f"{t}={v.item():.4g}" for t, v in terms.items())
    raise NonFiniteLossError(
        f"non-finite loss {when}{values}. {kept}; no checkpoint of this state is written. "
        "Lower model.lr or check the input data.")


@rank_zero_only
def say(message: str) -> None:
    print(message, file=sys.stderr)


def check_hparams(latent_dim, alpha, alpha_mode, kl_target, alpha_lr, constraint_ema, lr,
                  lr_schedule="constant") -> None:
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
        (lr_schedule in SCHEDULES, f"model.lr_schedule must be {' or '.join(map(repr, SCHEDULES))}",
         lr_schedule),
    ]
    for ok, message, value in checks:
        if not ok:
            raise ConfigError(f"{message}, got {value!r}")
