"""Update rules for the Lagrange multiplier alpha of the constrained mode.

The constrained mode solves  min -ELBO  s.t.  C = KL(q(z'|x') || q(z|x)) <= epsilon  through the
Lagrangian -ELBO + alpha * (C - epsilon); the networks descend it and alpha ascends it. How alpha
ascends decides whether the constraint is met within a run, and whether one set of defaults serves
every dataset and latent size. Each rule here is a small ``nn.Module`` whose buffers hold its state
(so checkpoints keep it and DDP sees the same state on every rank, given the same inputs), called
once per training step with that step's constraint value (all-reduced by the caller under DDP):

    new_alpha = rule(constraint, target)

- ``DualAscent``: alpha <- max(0, alpha + step * (C_ema - eps)), projected dual ascent on a moving
  average of C (the first release's rule). Its step is in units of alpha per nat: the same step is
  too slow where C starts far above eps and too jumpy where alpha must be large.
- ``GECO``: log alpha <- log alpha + rate * (C_ema - eps) (Rezende & Viola 2018, as the public
  ports write it): multiplicative, so alpha moves by a fraction of itself.
- ``NuPI``: a PI controller on log alpha (ControlVAE, Shao et al. 2020; nuPI, Sohrabi et al. 2024),
  on the relative error e = (C - eps) / eps, so the gains do not depend on the scale of C:
  xi_t = nu * xi_{t-1} + (1 - nu) * e_t;  log alpha += K_I * e_t + K_P * (xi_t - xi_{t-1}).

The multiplicative rules keep alpha in [alpha_min, alpha_max] and stop integrating at the bounds
(anti-windup), so a constraint that cannot be met does not drive alpha to overflow.
"""

import math

import torch
from torch import Tensor, nn


class MultiplierRule(nn.Module):
    """Base: holds alpha (its initial value ``alpha``) and C_ema, the moving average of C."""

    def __init__(self, alpha: float = 1.0, ema: float = 0.99):
        super().__init__()
        if not 0 <= ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        self.ema = ema
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.register_buffer("constraint_avg", torch.tensor(float("nan")))  # NaN: no step yet

    def _average(self, constraint: Tensor) -> Tensor:
        avg = torch.where(self.constraint_avg.isnan(), constraint,
                          self.ema * self.constraint_avg + (1 - self.ema) * constraint)
        self.constraint_avg = avg  # a new tensor: the caller's loss may still hold the old one
        return avg

    def forward(self, constraint: Tensor, target: float) -> Tensor:
        raise NotImplementedError


class DualAscent(MultiplierRule):
    """alpha <- max(0, alpha + step * (C_ema - eps))."""

    def __init__(self, alpha: float = 1.0, step: float = 0.01, ema: float = 0.99):
        super().__init__(alpha, ema)
        self.step = step

    def forward(self, constraint: Tensor, target: float) -> Tensor:
        avg = self._average(constraint.detach())
        self.alpha = (self.alpha + self.step * (avg - target)).clamp(min=0.0)
        return self.alpha


class _LogMultiplier(MultiplierRule):
    """A rule that moves log alpha, kept in [log alpha_min, log alpha_max]."""

    def __init__(self, alpha: float, ema: float, alpha_min: float, alpha_max: float):
        if not 0 < alpha_min <= alpha <= alpha_max:
            raise ValueError("need 0 < alpha_min <= alpha <= alpha_max, got "
                             f"{alpha_min}, {alpha}, {alpha_max}")
        super().__init__(alpha, ema)
        self.log_min, self.log_max = math.log(alpha_min), math.log(alpha_max)

    def _move(self, delta: Tensor) -> Tensor:
        log_alpha = (self.alpha.log() + delta).clamp(self.log_min, self.log_max)
        self.alpha = log_alpha.exp()
        return self.alpha


class GECO(_LogMultiplier):
    """log alpha <- log alpha + rate * (C_ema - eps), alpha in [alpha_min, alpha_max]."""

    def __init__(self, alpha: float = 1.0, rate: float = 1e-3, ema: float = 0.99,
                 alpha_min: float = 1e-3, alpha_max: float = 1e3):
        super().__init__(alpha, ema, alpha_min, alpha_max)
        self.rate = rate

    def forward(self, constraint: Tensor, target: float) -> Tensor:
        avg = self._average(constraint.detach())
        return self._move(self.rate * (avg - target))


class NuPI(_LogMultiplier):
    """PI control of log alpha on the relative error e = (C - eps) / eps.

    ``k_i``: integral gain (per step; the step size of plain ascent on log alpha). ``k_p``:
    proportional gain on the change of xi, the error's moving average with factor ``nu``, which
    damps the oscillation of a pure integrator. Anti-windup: at a bound, the integral term that
    would push further out is dropped.
    """

    def __init__(self, alpha: float = 1.0, k_i: float = 1e-3, k_p: float = 0.1, nu: float = 0.99,
                 ema: float = 0.99, alpha_min: float = 1e-3, alpha_max: float = 1e3):
        super().__init__(alpha, ema, alpha_min, alpha_max)
        if not 0 <= nu < 1:
            raise ValueError(f"nu must be in [0, 1), got {nu}")
        self.k_i, self.k_p, self.nu = k_i, k_p, nu
        # xi starts at 0, so the proportional steps add up to k_p * xi_t: PI on the filtered error
        self.register_buffer("xi", torch.tensor(0.0))

    def forward(self, constraint: Tensor, target: float) -> Tensor:
        self._average(constraint.detach())  # kept for logging and checkpoints, as in every rule
        error = (constraint.detach() - target) / target
        previous, xi = self.xi, self.nu * self.xi + (1 - self.nu) * error
        self.xi = xi
        integral = self.k_i * error
        log_alpha = self.alpha.log()
        at_top, at_bottom = log_alpha >= self.log_max, log_alpha <= self.log_min
        integral = torch.where((at_top & (integral > 0)) | (at_bottom & (integral < 0)),
                               torch.zeros_like(integral), integral)
        return self._move(integral + self.k_p * (xi - previous))
