"""Inference suboptimality (Cremer, Li & Duvenaud 2018): where the ELBO loses to log p(x).

The paper argues that an inconsistent encoder is a poor posterior; this module measures it. For
each image, with the decoder fixed:

    log p(x) - ELBO_enc(x) =  [log p(x) - ELBO*(x)]  +  [ELBO*(x) - ELBO_enc(x)]
                              approximation gap          amortisation gap

- ``ELBO_enc``: the ELBO of the encoder's own q(z|x) = N(mu(x), diag(exp(logvar(x)))).
- ``ELBO*``: the ELBO of the best diagonal Gaussian for that image alone, found by gradient ascent
  on its own (mu, logvar), started from the encoder's output (``optimise_posterior``).
- ``log p(x)``: the IWAE bound with the optimised Gaussian as proposal, K samples.

The amortisation gap is what the encoder loses by sharing its weights across images; the
approximation gap is what any diagonal Gaussian loses. Both are >= 0 up to Monte Carlo noise.
The functions take ``log_likelihood(z, x) -> log p(x|z)``, (S, B, D) and (B, ...) -> (S, B), so
they serve any decoder (the tests use a linear-Gaussian one, where every quantity is known).
"""

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from torchmetrics import Metric

from consistency_vae import losses
from consistency_vae.evaluation import quadrature
from consistency_vae.evaluation.standard_errors import standard_error

LogLikelihood = Callable[[Tensor, Tensor], Tensor]  # (z (S, B, D), x (B, ...)) -> (S, B)


@dataclass(frozen=True)
class GapSettings:
    """How the local posteriors are optimised and the bounds estimated (recorded in metrics.json)."""

    max_steps: int = 500  # Adam steps on each image's (mu, logvar) at most
    lr: float = 1e-2
    train_samples: int = 8  # z samples per step for the ELBO's gradient
    check_every: int = 50  # steps between convergence checks
    tolerance: float = 1e-3  # a check that gains less (mean ELBO, nats) divides lr by 4 ...
    max_decays: int = 3  # ... and the third such check stops: the noise of the steps shrinks with lr
    eval_samples: int = 256  # z samples for ELBO_enc and ELBO*, the same eps for both
    iwae_k: int = 1000  # samples of the IWAE bound for log p(x)

    def as_dict(self) -> dict:
        return asdict(self)


def elbo(log_likelihood: LogLikelihood, x: Tensor, mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """Monte Carlo ELBO with the analytic KL to N(0, I): mean_s log p(x|z_s) - KL. eps (S, B, D) -> (B,)."""
    z = mu + (0.5 * logvar).exp() * eps  # (S, B, D)
    return log_likelihood(z, x).mean(0) - losses.kl_to_standard_normal(mu, logvar)


def iwae(log_likelihood: LogLikelihood, x: Tensor, mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x) with z_k = mu + sigma * eps_k. eps (K, B, D) -> (B,)."""
    z = mu + (0.5 * logvar).exp() * eps
    log_pz = losses.gaussian_log_prob(z, torch.zeros_like(mu), torch.zeros_like(logvar))
    return losses.iwae_bound(log_likelihood(z, x), log_pz, losses.gaussian_log_prob(z, mu, logvar))


def optimise_posterior(log_likelihood: LogLikelihood, x: Tensor, mu0: Tensor, logvar0: Tensor,
                       settings: GapSettings = GapSettings(), generator: torch.Generator | None = None
                       ) -> tuple[Tensor, Tensor, int]:
    """Each image's own best (mu, logvar), by Adam on its ELBO from (mu0, logvar0). (B, D) each.

    The images are independent (the batch's ELBO is a sum), so one optimiser serves the batch.
    Every ``check_every`` steps the mean ELBO of those steps is compared with the previous
    window's: a gain below ``tolerance`` nats divides the step size by 4 (stochastic gradients
    leave Adam jittering around the optimum by about lr), and the ``max_decays``-th stops. Also
    stops after ``max_steps``. Returns (mu, logvar, steps taken).
    """
    mu = mu0.detach().clone().requires_grad_(True)
    logvar = logvar0.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([mu, logvar], lr=settings.lr)
    shape = (settings.train_samples, *mu.shape)
    previous, window, decays, step = -math.inf, 0.0, 0, 0
    with torch.enable_grad():
        for step in range(1, settings.max_steps + 1):
            eps = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
            value = elbo(log_likelihood, x, mu, logvar, eps)  # (B,)
            optimiser.zero_grad(set_to_none=True)
            (-value.sum()).backward()
            optimiser.step()
            window += value.detach().mean()  # a tensor: no device sync until the check
            if step % settings.check_every == 0:
                current, window = float(window) / settings.check_every, 0.0
                if current - previous < settings.tolerance:
                    decays += 1
                    if decays == settings.max_decays:
                        break
                    for group in optimiser.param_groups:
                        group["lr"] /= 4
                previous = max(previous, current)
    return mu.detach(), logvar.detach(), step


def inference_gaps(log_likelihood: LogLikelihood, x: Tensor, mu: Tensor, logvar: Tensor,
                   settings: GapSettings = GapSettings(), generator: torch.Generator | None = None,
                   mode: Tensor | None = None, exact_log_px: Tensor | None = None) -> dict[str, Tensor | int]:
    """Per-image amortisation and approximation gaps, (B,) each, with the bounds they come from.

    ``mu, logvar``: the encoder's posterior of ``x``. The ELBOs of the encoder's and of the
    optimised posterior use the same eps (common random numbers), so their difference carries
    little Monte Carlo noise. With a 2-D latent (``evaluation/quadrature.py``): ``mode``, (B, D), the
    grid's best z of each image, where a posterior has two modes and the encoder sits on the lesser
    one; the optimisation starts from whichever of it and mu has the better ELBO (with the
    encoder's variance), and ``changed_start`` counts the images that start from the mode.
    ``exact_log_px``, (B,): log p(x) by quadrature, in place of the IWAE bound (whose proposal, the
    optimised Gaussian, misses a second mode too).
    """
    with torch.no_grad():
        eps = torch.randn((settings.eval_samples, *mu.shape), generator=generator, device=mu.device,
                          dtype=mu.dtype)
        elbo_enc = elbo(log_likelihood, x, mu, logvar, eps)
        start = mu
        if mode is not None:
            better = elbo(log_likelihood, x, mode.to(mu), logvar, eps) > elbo_enc  # (B,)
            start = torch.where(better[:, None], mode.to(mu), mu)
    opt_mu, opt_logvar, steps = optimise_posterior(log_likelihood, x, start, logvar, settings, generator)
    with torch.no_grad():
        elbo_opt = elbo(log_likelihood, x, opt_mu, opt_logvar, eps)
        if exact_log_px is None:
            eps_k = torch.randn((settings.iwae_k, *mu.shape), generator=generator, device=mu.device,
                                dtype=mu.dtype)
            log_px = iwae(log_likelihood, x, opt_mu, opt_logvar, eps_k)
        else:
            log_px = exact_log_px.to(elbo_opt)
    return {"amortization_gap": elbo_opt - elbo_enc, "approximation_gap": log_px - elbo_opt,
            "elbo_encoder": elbo_enc, "elbo_optimised": elbo_opt, "log_px": log_px, "steps": steps,
            "hit_step_limit": steps >= settings.max_steps,
            "changed_start": int(better.sum()) if mode is not None else 0}


def bernoulli_log_likelihood(decoder: Callable[[Tensor], Tensor]) -> LogLikelihood:
    """log p(x|z) of a decoder returning Bernoulli logits, summed over pixels: (S, B, D) -> (S, B)."""

    def log_likelihood(z: Tensor, x: Tensor) -> Tensor:
        n_samples, batch, dim = z.shape
        logits = decoder(z.reshape(-1, dim)).reshape(n_samples, batch, -1)  # (S, B, P)
        return -torch.nn.functional.binary_cross_entropy_with_logits(
            logits, x.flatten(1).expand_as(logits), reduction="none").sum(-1)

    return log_likelihood


class InferenceGaps(Metric):
    """Mean amortisation and approximation gaps (inference_gaps.py) of the first gap_images test
    images; slow (an optimisation per image), so opt-in. Its settings go into metrics.json."""

    def __init__(self, settings: dict):
        super().__init__()
        self.images, self.seed = settings["gap_images"], settings["seed"]
        self.points = settings.get("quadrature_points", quadrature.POINTS)  # n of the 2-D grid
        self.settings = GapSettings()
        for state in ("amortization", "amortization_sq", "approximation", "approximation_sq", "count"):
            self.add_state(state, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.steps, self.limit_hit, self.changed_start = [], 0, 0  # per batch; evaluate runs on one process
        self.log_px_from = "iwae"  # "quadrature" with a 2-D latent

    def update(self, batch) -> None:  # an eval_metrics.EvalBatch
        n = min(len(batch.x), self.images - batch.start)
        if n <= 0:
            return
        x, (mu, logvar) = batch.x[:n], batch.encode()
        generator = torch.Generator(device=x.device).manual_seed(self.seed + 4 + batch.start)
        # 2-D: the grid's mode as a second start, and log p(x) by quadrature (quadrature.py)
        log_px, mode = (quadrature.scan(batch.model.decoder, x, points=self.points) if mu.shape[1] == 2
                        else (None, None))
        self.log_px_from = "iwae" if log_px is None else "quadrature"
        gaps = inference_gaps(bernoulli_log_likelihood(batch.model.decoder),
                              x, mu[:n], logvar[:n], self.settings, generator, mode, log_px)
        self.steps.append(gaps["steps"])
        self.limit_hit += int(gaps["hit_step_limit"])
        self.changed_start += gaps["changed_start"]
        for name in ("amortization", "approximation"):
            gap = gaps[f"{name}_gap"].detach().double()  # (n,)
            getattr(self, name).add_(gap.sum())
            getattr(self, f"{name}_sq").add_(gap.pow(2).sum())
        self.count += n

    def compute(self) -> dict:
        result = {}
        for name in ("amortization", "approximation"):
            total, total_sq = getattr(self, name), getattr(self, f"{name}_sq")
            result[f"{name}_gap"] = float(total / self.count)
            result[f"{name}_gap_se"] = float(standard_error(total, total_sq, self.count))
        return {**result, "inference_gaps_settings": {
            **self.settings.as_dict(), "images": int(self.count), "steps": self.steps,
            "batches_at_step_limit": self.limit_hit, "images_started_at_grid_mode": self.changed_start,
            "log_px": self.log_px_from, "quadrature_points": self.points}}
