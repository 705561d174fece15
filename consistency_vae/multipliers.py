"""Update rules for the Lagrange multiplier alpha of the constrained mode.

The constrained mode solves  min -ELBO  s.t.  C = KL(q(z'|x') || q(z|x)) <= epsilon  through the
Lagrangian -ELBO + alpha * (C - epsilon); the networks descend it and alpha ascends it. How alpha
ascends decides whether the constraint is met within a run, and whether one set of defaults serves
every dataset and latent size. Each rule here is a small ``nn.Module`` (buffers hold any state of
its own, so checkpoints keep it, and DDP sees the same state on every rank given the same inputs),
called once per training step with that step's constraint value (all-reduced under DDP):

    alpha, constraint_avg = rule(alpha, constraint_avg, constraint, target)

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

A rule is saved in a checkpoint's hyper-parameters as ``as_config()``, its class_path and
init_args (the form the YAML config uses), never as a module: plain data loads with
``torch.load(weights_only=True)``, and ``rule_from_config`` rebuilds the same rule (its state,
NuPI's xi, is in the state_dict).
"""

import inspect
import math
import sys

import torch
from torch import Tensor, nn

from consistency_vae.errors import ConfigError


class MultiplierRule(nn.Module):
    """Base: the moving average C_ema (factor ``ema``) that every rule keeps and logs.

    ``forward(alpha, constraint_avg, constraint, target) -> (alpha, constraint_avg)``: the model
    owns alpha and C_ema (buffers of its own, so checkpoints of every release keep their keys);
    a rule owns only the extra state it needs (NuPI's xi), as buffers of its own.
    """

    def __init__(self, ema: float = 0.99):
        super().__init__()
        if not 0 <= ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        self.ema = ema

    def average(self, constraint_avg: Tensor, constraint: Tensor) -> Tensor:
        """C_ema after this step's C; the first step (C_ema NaN) starts it at C."""
        return torch.where(constraint_avg.isnan(), constraint,
                           self.ema * constraint_avg + (1 - self.ema) * constraint)

    def forward(self, alpha: Tensor, constraint_avg: Tensor, constraint: Tensor,
                target: float) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def as_config(self) -> dict:
        """``{"class_path": ..., "init_args": {...}}``: what ``rule_from_config`` rebuilds it from.

        The init_args are read from the attributes named as ``__init__``'s arguments (as
        scikit-learn's ``get_params`` does): a rule keeps each argument under its own name.
        """
        params = list(inspect.signature(type(self).__init__).parameters.values())[1:]  # no self
        names = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        missing = [name for name in names if not hasattr(self, name)]
        if missing:  # a bug in the rule's class, not the user's input
            raise TypeError(f"{type(self).__name__} must keep its __init__ arguments {missing} as "
                            "attributes of the same names, so that a checkpoint can rebuild it")
        return {"class_path": f"{type(self).__module__}.{type(self).__qualname__}",
                "init_args": {name: getattr(self, name) for name in names}}


class DualAscent(MultiplierRule):
    """alpha <- max(0, alpha + step * (C_ema - eps))."""

    def __init__(self, step: float = 0.01, ema: float = 0.99):
        super().__init__(ema)
        self.step = step

    def forward(self, alpha, constraint_avg, constraint, target):
        avg = self.average(constraint_avg, constraint)
        return (alpha + self.step * (avg - target)).clamp(min=0.0), avg


class _LogMultiplier(MultiplierRule):
    """A rule that moves log alpha, kept in [log alpha_min, log alpha_max]."""

    def __init__(self, ema: float, alpha_min: float, alpha_max: float):
        if not 0 < alpha_min < alpha_max:
            raise ValueError(f"need 0 < alpha_min < alpha_max, got {alpha_min}, {alpha_max}")
        super().__init__(ema)
        self.alpha_min, self.alpha_max = alpha_min, alpha_max
        self.log_min, self.log_max = math.log(alpha_min), math.log(alpha_max)

    def _move(self, alpha: Tensor, delta: Tensor) -> Tensor:
        # alpha = 0 (a plain-VAE start) would stay 0 on a log scale: start from the floor instead
        log_alpha = alpha.clamp(min=math.exp(self.log_min)).log()
        return (log_alpha + delta).clamp(self.log_min, self.log_max).exp()


class GECO(_LogMultiplier):
    """log alpha <- log alpha + rate * (C_ema - eps), alpha in [alpha_min, alpha_max]."""

    def __init__(self, rate: float = 1e-3, ema: float = 0.99, alpha_min: float = 1e-3,
                 alpha_max: float = 1e3):
        super().__init__(ema, alpha_min, alpha_max)
        self.rate = rate

    def forward(self, alpha, constraint_avg, constraint, target):
        avg = self.average(constraint_avg, constraint)
        return self._move(alpha, self.rate * (avg - target)), avg


class NuPI(_LogMultiplier):
    """PI control of log alpha on the relative error e = (C - eps) / eps.

    ``k_i``: integral gain (per step; the step size of plain ascent on log alpha). ``k_p``:
    proportional gain on the change of xi, the error's moving average with factor ``nu``, which
    damps the oscillation of a pure integrator; xi starts at 0, so the proportional steps add up
    to k_p * xi_t. Anti-windup: at a bound, the integral step that would push further out is dropped.
    """

    def __init__(self, k_i: float = 3e-3, k_p: float = 1.0, nu: float = 0.99, ema: float = 0.99,
                 alpha_min: float = 1e-3, alpha_max: float = 1e3):
        super().__init__(ema, alpha_min, alpha_max)
        if not 0 <= nu < 1:
            raise ValueError(f"nu must be in [0, 1), got {nu}")
        self.k_i, self.k_p, self.nu = k_i, k_p, nu
        self.register_buffer("xi", torch.tensor(0.0))

    def forward(self, alpha, constraint_avg, constraint, target):
        avg = self.average(constraint_avg, constraint)  # kept for logging, as in every rule
        error = (constraint - target) / target
        previous, xi = self.xi, self.nu * self.xi + (1 - self.nu) * error
        self.xi = xi  # a new tensor: nothing that backward needs is changed in place
        integral = self.k_i * error
        log_alpha = alpha.clamp(min=math.exp(self.log_min)).log()
        at_top, at_bottom = log_alpha >= self.log_max, log_alpha <= self.log_min
        integral = torch.where((at_top & (integral > 0)) | (at_bottom & (integral < 0)),
                               torch.zeros_like(integral), integral)
        return self._move(alpha, integral + self.k_p * (xi - previous)), avg


def rule_from_config(config: dict) -> MultiplierRule:
    """The rule that ``MultiplierRule.as_config()`` describes. Only a MultiplierRule class that is
    already imported is built: a checkpoint names a class, it never makes code run on import."""
    path = str(config.get("class_path", ""))
    module, _, name = path.rpartition(".")
    rule = getattr(sys.modules.get(module), name, None)
    if not (isinstance(rule, type) and issubclass(rule, MultiplierRule)):
        raise ConfigError(f"multiplier class_path {path!r} is not an imported MultiplierRule: import "
                          "the module that defines it before loading the checkpoint (built in: "
                          "consistency_vae.multipliers.DualAscent, GECO, NuPI)")
    return rule(**config.get("init_args", {}))


def model_rule(multiplier, alpha_mode: str, step: float, ema: float) -> tuple[MultiplierRule | None, object]:
    """(the rule a model runs, what its hyper-parameters save) from ``model.multiplier``: a rule, or
    the saved ``as_config`` form of one (rebuilt); None is ``DualAscent(step, ema)`` in constrained
    mode and no rule in fixed mode (the model summary once listed a DualAscent that never ran)."""
    rule = rule_from_config(multiplier) if isinstance(multiplier, dict) else multiplier
    saved = rule.as_config() if isinstance(rule, MultiplierRule) else multiplier
    if rule is None and alpha_mode == "constrained":
        rule = DualAscent(step=step, ema=ema)
    return rule, saved
