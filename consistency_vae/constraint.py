"""Choosing alpha automatically: the consistency constraint as a Lagrangian (beyond the paper).

Instead of a fixed weight, solve

    min_theta  -ELBO(theta)   subject to   C(theta) = KL( q(z'|x') || q(z|x) ) <= epsilon

through its Lagrangian  -ELBO + alpha * (C - epsilon)  with alpha >= 0, as GECO (Rezende & Viola
2018, "Taming VAEs") does for reconstruction constraints. The networks descend the Lagrangian;
alpha ascends it by projected dual ascent on a moving average C_avg of the constraint:

    alpha <- max(0, alpha + eta * (C_avg - epsilon))

so alpha rises while the constraint is violated, and falls back (never below 0) once it holds.
"""

from torch import Tensor


def dual_ascent_step(alpha: Tensor, constraint: Tensor, target: float, step_size: float) -> Tensor:
    """One projected dual ascent step on the multiplier: max(0, alpha + step_size * (C - target))."""
    return (alpha + step_size * (constraint - target)).clamp(min=0.0)
