"""The standard errors of evaluate's numbers (standard_errors.py) against numpy, on known data."""

import math

import numpy as np
import pytest
import torch

from consistency_vae.evaluation.standard_errors import (
    active_units_bootstrap,
    binomial_standard_error,
    standard_error,
)


def sums(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return values.sum(-1), values.pow(2).sum(-1)


@pytest.mark.parametrize("offset", [0.0, -150.0, 1e4])  # far from 0: the sum of squares cancels
def test_standard_error_is_numpys_std_over_sqrt_n(offset):
    g = torch.Generator().manual_seed(0)
    values = offset + 40.0 * torch.randn(3, 1000, generator=g, dtype=torch.float64)  # (3, N)
    expected = values.numpy().std(axis=1, ddof=1) / math.sqrt(1000)
    np.testing.assert_allclose(standard_error(*sums(values), 1000).numpy(), expected, rtol=1e-9)  # float64


def test_uneven_batches_give_the_one_pass_standard_error():
    g = torch.Generator().manual_seed(1)
    values = -150.0 + 40.0 * torch.randn(1000, generator=g, dtype=torch.float64)
    total = total_sq = torch.zeros((), dtype=torch.float64)
    for part in values.split([1, 10, 499, 3, 487]):  # as a metric's updates, or ranks, add them
        total, total_sq = total + part.sum(), total_sq + part.pow(2).sum()
    assert standard_error(total, total_sq, 1000).item() == pytest.approx(
        standard_error(*sums(values), 1000).item(), rel=1e-12)  # float64 sums, regrouped


def test_one_value_has_no_standard_error():
    assert math.isnan(standard_error(*sums(torch.tensor([3.0], dtype=torch.float64)), 1).item())
    assert standard_error(*sums(torch.full((5,), 2.5, dtype=torch.float64)), 5).item() == 0.0


@pytest.mark.parametrize("correct, n", [(62, 100), (0, 40), (1000, 1000), (7, 13)])
def test_binomial_standard_error_is_that_of_the_correct_or_not_vector(correct, n):
    hits = np.r_[np.ones(correct), np.zeros(n - correct)]  # 1 where the fixed classifier is right
    expected = hits.std(ddof=0) / math.sqrt(n)  # sqrt(p (1 - p) / n), the binomial SE
    assert binomial_standard_error(correct / n, n) == pytest.approx(expected, rel=1e-12, abs=1e-15)  # float64


def test_active_units_bootstrap_matches_numpy_on_the_same_draws():
    g = torch.Generator().manual_seed(2)
    # variances 1, 0, 0.0098 (at the 0.01 threshold: its count flips between resamples) and 0.04
    mu = torch.randn(400, 4, generator=g) * torch.tensor([1.0, 0.0, 0.0098**0.5, 0.2])  # (N, D)
    counts = active_units_bootstrap(mu, 0.01, torch.Generator().manual_seed(7), resamples=50)
    indices = torch.randint(400, (50, 400), generator=torch.Generator().manual_seed(7)).numpy()
    rows = mu.double().numpy()
    expected = [(rows[i].var(axis=0) > 0.01).sum() for i in indices]  # population variance, per draw
    assert counts.tolist() == expected
    assert set(expected) == {2, 3}  # the third dim is in some draws and out of others
    assert counts.double().std().item() == pytest.approx(np.std(expected, ddof=1), rel=1e-12)  # float64


def test_active_units_bootstrap_of_clearly_separated_dims_does_not_vary():
    g = torch.Generator().manual_seed(3)
    mu = torch.randn(500, 3, generator=g) * torch.tensor([1.0, 0.001, 0.5])  # variances 1, 1e-6, 0.25
    counts = active_units_bootstrap(mu, 0.01, torch.Generator().manual_seed(0))
    assert len(counts) == 200 and counts.double().std().item() == 0.0 and counts[0] == 2
