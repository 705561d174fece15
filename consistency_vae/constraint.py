"""Choosing alpha automatically: the consistency constraint as a Lagrangian (beyond the paper).

Instead of a fixed weight, solve

    min_theta  -ELBO(theta)   subject to   C(theta) = KL( q(z'|x') || q(z|x) ) <= epsilon

through its Lagrangian  -ELBO + alpha * (C - epsilon)  with alpha >= 0, as GECO (Rezende & Viola
2018, "Taming VAEs") does for reconstruction constraints. The networks descend the Lagrangian;
alpha ascends it by one of the rules in ``multipliers.py`` (``model.multiplier``), so alpha rises
while the constraint is violated and falls back once it holds. This module holds what does not
depend on the rule: how a constrained run's checkpoints are chosen.
"""

import torch
from torch import Tensor

# Added to the criterion of an epoch that misses the target: more than any feasible epoch's
# -ELBO (a decoder that outputs 0.5 everywhere scores P log 2 nats for P pixels: 543 on MNIST,
# 8517 for 64x64 RGB), so any epoch that meets the constraint is chosen over any that does not.
# float32 still resolves 0.06 nats at 1e6, enough to rank the infeasible epochs among themselves.
INFEASIBLE = 1.0e6
VIOLATION_PENALTY = 100.0  # nats per nat of excess KL, as the sweeps' val/constrained_elbo


def selection_criterion(elbo: Tensor, kl_consistency: Tensor, loss: Tensor, alpha_mode: str,
                        kl_target: float) -> Tensor:
    """What the checkpoint callback minimises (``val/selection``): it must not move with alpha.

    ``val/loss = recon + kl + alpha * C`` weighs C by the *current* alpha; in constrained mode
    alpha rises during training, so later epochs would look worse for that alone.

    - constrained: -ELBO for an epoch whose validation C meets ``kl_target`` (the best ELBO among
      feasible epochs wins); else INFEASIBLE + 100 * (C - kl_target) - ELBO (the least violation,
      then the ELBO, as ``alpha_choice.constrained_elbo``).
    - fixed: val/loss, the objective the run minimises, whose alpha never changes.
    Scalars in (nats per image), scalar out.
    """
    if alpha_mode == "fixed":
        return loss
    excess = kl_consistency - kl_target
    penalty = torch.where(excess > 0, INFEASIBLE + VIOLATION_PENALTY * excess, torch.zeros_like(excess))
    return penalty - elbo
