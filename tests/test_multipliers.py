"""Multiplier update rules: each solves a toy constrained problem with a known answer, with its defaults."""

import math

import pytest
import torch

from consistency_vae.multipliers import GECO, DualAscent, NuPI

RULES = [DualAscent, GECO, NuPI]


def solve_toy(rule, target: float, steps: int = 20_000) -> tuple[float, list[float]]:
    """min (t - 3)^2 s.t. t^2 <= target, the networks' side by SGD, alpha by ``rule``."""
    theta = torch.tensor(3.0, requires_grad=True)
    optimizer = torch.optim.SGD([theta], lr=0.01)
    alphas = []
    for _ in range(steps):
        constraint = theta**2
        loss = (theta - 3) ** 2 + rule.alpha * constraint
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        alphas.append(float(rule(constraint.detach(), target)))
    return theta.item(), alphas


@pytest.mark.parametrize("rule_class", RULES)
def test_active_constraint_reaches_the_kkt_point(rule_class):
    # active: min (t-3)^2 s.t. t^2 <= 1 -> t* = 1; KKT: 2(t-3) + 2 a t = 0 -> a* = 2
    theta, alphas = solve_toy(rule_class(alpha=1.0), target=1.0)
    assert theta == pytest.approx(1.0, abs=1e-2)
    assert alphas[-1] == pytest.approx(2.0, abs=2e-2)
    assert alphas[100] > 1.0  # it rose while the constraint was violated (theta started at 3)


@pytest.mark.parametrize("rule_class", RULES)
def test_inactive_constraint_lets_alpha_fall_to_its_floor(rule_class):
    # inactive: t = 3 is feasible for t^2 <= 16, so a* = 0 (the log rules stop at alpha_min)
    rule = rule_class(alpha=1.0)
    theta, alphas = solve_toy(rule, target=16.0)
    floor = getattr(rule, "log_min", -math.inf)
    assert alphas[-1] == pytest.approx(max(0.0, math.exp(floor)), abs=1e-2)
    assert theta == pytest.approx(3.0, abs=2e-2)
    assert min(alphas) >= 0.0


@pytest.mark.parametrize("rule_class", [GECO, NuPI])
def test_log_rules_stay_in_bounds_when_the_constraint_cannot_be_met(rule_class):
    rule = rule_class(alpha=1.0, alpha_max=10.0)
    for _ in range(10_000):
        rule(torch.tensor(5.0), 1.0)  # always violated
    assert float(rule.alpha) == pytest.approx(10.0)
    for _ in range(300):  # and come back once C_ema (factor 0.99) holds: no wound-up integral to unwind
        rule(torch.tensor(0.5), 1.0)
    assert float(rule.alpha) < 10.0


@pytest.mark.parametrize("rule_class", RULES)
def test_state_survives_a_state_dict_round_trip(rule_class):
    rule = rule_class(alpha=1.0)
    for c in (3.0, 2.0, 1.5):
        rule(torch.tensor(c), 1.0)
    copy = rule_class(alpha=1.0)
    copy.load_state_dict(rule.state_dict())
    assert torch.equal(copy(torch.tensor(1.2), 1.0), rule(torch.tensor(1.2), 1.0))  # same maths, same bits
