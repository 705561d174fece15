"""Standard errors of the test-set numbers: how far another draw of test images would move them.

Every ``evaluate`` number that is a mean over images gets ``sqrt(s^2 / n)``, with ``s^2`` the
sample variance (n - 1) of the per-image values. The metrics keep it DDP-correct the same way as
the mean: float64 sums of the values and of their squares, reduced by sum across processes. An
accuracy gets the binomial ``sqrt(p (1 - p) / n)``; the active-unit count, which is no mean, a
bootstrap over the test images.
"""

import torch
from torch import Tensor

BOOTSTRAP_RESAMPLES = 200  # the count's SE to ~5% (a std from R draws is off by ~1/sqrt(2R))


def standard_error(total: Tensor, total_sq: Tensor, count: Tensor | float) -> Tensor:
    """Standard error of the mean, sqrt(s^2 / n), from sum(v), sum(v^2) and n; (...) each -> (...).

    s^2 = (sum(v^2) - sum(v)^2 / n) / (n - 1), the sample variance. In float64 the subtraction
    loses about 1e-16 * mean^2 / s^2 of s^2: negligible unless |mean| > 1e6 s. NaN for n < 2
    (one value has no spread).
    """
    count = torch.as_tensor(count, dtype=total.dtype, device=total.device)
    if count < 2:
        return torch.full_like(total, float("nan"))
    variance = (total_sq - total * (total / count)).clamp(min=0.0) / (count - 1)
    return (variance / count).sqrt()


def binomial_standard_error(accuracy: float, n: int) -> float:
    """sqrt(p (1 - p) / n): the SE of an accuracy p over n independent test images, the classifier
    held fixed (its own variation with the training set is not in it). NaN for n = 0."""
    return (accuracy * (1.0 - accuracy) / n) ** 0.5 if n > 0 else float("nan")


def active_units_bootstrap(mu: Tensor, threshold: float, generator: torch.Generator,
                           resamples: int = BOOTSTRAP_RESAMPLES) -> Tensor:
    """Active-unit counts of ``resamples`` bootstrap draws of the rows of mu, (N, D) -> (R,).

    A draw takes N rows with replacement and counts the dims with Var[mu_d] > threshold
    (population variance, as ``metrics.ActiveUnits``). The indices are drawn at once, (R, N), so
    a test can repeat them; the rows are gathered one draw at a time, (N, D) each.
    """
    n = len(mu)
    mu = mu.double()
    indices = torch.randint(n, (resamples, n), generator=generator)  # (R, N)
    return torch.stack([(mu[rows].var(0, unbiased=False) > threshold).sum() for rows in indices])
