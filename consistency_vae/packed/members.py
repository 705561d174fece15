"""Who is in a pack, and each member's model built as its solo ``fit`` builds it.

A member is a seed and the values that keep tensor shapes (``PER_MEMBER``); everything else is one
set of ``ConsistencyVAE`` keyword arguments shared by the pack, so members cannot differ in shape.
"""

import copy
from dataclasses import dataclass
from typing import Literal

import torch

from consistency_vae.errors import ConfigError
from consistency_vae.model import ConsistencyVAE

PER_MEMBER = ("alpha", "alpha_mode", "kl_target")  # with the seed: what may differ inside a pack


@dataclass(frozen=True)
class PackMember:
    """One grid point: the run ``fit --seed_everything=seed --model.alpha=... `` would train."""

    seed: int
    alpha: float = 1.0
    alpha_mode: Literal["fixed", "constrained"] = "fixed"
    kl_target: float = 1.0

    def name(self) -> str:
        mode = f"constrained kl_target={self.kl_target:g} " if self.alpha_mode == "constrained" else ""
        return f"{mode}alpha={self.alpha:g} seed={self.seed}"


def check_shared(shared: dict) -> None:
    """The shared keyword arguments may not set what each member sets."""
    clash = sorted(set(shared) & {*PER_MEMBER, "seed"})
    if clash:
        raise ConfigError(f"packed training: {clash} are set per member (PackMember), not in the shared "
                          f"model arguments: move them into each PackMember")


def build_model(member: PackMember, shared: dict) -> ConsistencyVAE:
    """The model as the solo run starts it. LightningCLI calls ``seed_everything(seed)`` and then
    instantiates the model; of what it seeds (random, numpy, torch), the weights' initialisation
    draws from torch's global generator alone, so ``torch.manual_seed(seed)`` gives the same weights.
    The caller's global RNG state is kept (fork_rng) and PL_GLOBAL_SEED is not set: a pack has
    N seeds, and reads each member's from here, never from the environment."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(member.seed)
        return ConsistencyVAE(**shared, alpha=member.alpha, alpha_mode=member.alpha_mode,
                              kl_target=member.kl_target)


def build_models(members: list[PackMember], shared: dict | None = None) -> list[ConsistencyVAE]:
    shared = dict(shared or {})
    check_shared(shared)
    if not members:
        raise ConfigError("packed training needs at least one member, got none")
    return [build_model(m, shared) for m in members]


def template_of(models: list[ConsistencyVAE]) -> ConsistencyVAE:
    """The module whose forward runs for every member, on the meta device (its own weights are
    never read: functional_call supplies each member's). A plain VAE (fixed alpha 0) computes its
    KL(z'||z) without gradient; a pack with any other member needs the gradient, so the template is
    a member that is not a plain VAE where there is one. A plain member then gets 0 * d(KL) added
    to its gradient: exact zeros, so its run is unchanged."""
    chosen = next((m for m in models if not m._is_plain_vae), models[0])
    return copy.deepcopy(chosen).to("meta")
