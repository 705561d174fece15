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
    alpha, avg, alphas = torch.tensor(1.0), torch.tensor(float("nan")), []
    for _ in range(steps):
        constraint = theta**2
        loss = (theta - 3) ** 2 + alpha * constraint
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        alpha, avg = rule(alpha, avg, constraint.detach(), target)
        alphas.append(float(alpha))
    return theta.item(), alphas


@pytest.mark.parametrize("rule_class", RULES)
def test_active_constraint_reaches_the_kkt_point(rule_class):
    # active: min (t-3)^2 s.t. t^2 <= 1 -> t* = 1; KKT: 2(t-3) + 2 a t = 0 -> a* = 2
    theta, alphas = solve_toy(rule_class(), target=1.0)
    assert theta == pytest.approx(1.0, abs=1e-2)
    assert alphas[-1] == pytest.approx(2.0, abs=2e-2)
    assert alphas[100] > 1.0  # it rose while the constraint was violated (theta started at 3)


@pytest.mark.parametrize("rule_class", RULES)
def test_inactive_constraint_lets_alpha_fall_to_its_floor(rule_class):
    # inactive: t = 3 is feasible for t^2 <= 16, so a* = 0 (the log rules stop at alpha_min)
    rule = rule_class()
    theta, alphas = solve_toy(rule, target=16.0)
    floor = getattr(rule, "log_min", -math.inf)
    assert alphas[-1] == pytest.approx(max(0.0, math.exp(floor)), abs=1e-2)
    assert theta == pytest.approx(3.0, abs=2e-2)
    assert min(alphas) >= 0.0


@pytest.mark.parametrize("rule_class", [GECO, NuPI])
def test_log_rules_stay_in_bounds_when_the_constraint_cannot_be_met(rule_class):
    rule = rule_class(alpha_max=10.0)
    alpha, avg = torch.tensor(1.0), torch.tensor(float("nan"))
    for _ in range(10_000):
        alpha, avg = rule(alpha, avg, torch.tensor(5.0), 1.0)  # always violated
    assert float(alpha) == pytest.approx(10.0)
    for _ in range(300):  # and come back once C_ema (factor 0.99) holds: no wound-up integral to unwind
        alpha, avg = rule(alpha, avg, torch.tensor(0.5), 1.0)
    assert float(alpha) < 10.0


@pytest.mark.parametrize("rule_class", RULES)
def test_state_survives_a_state_dict_round_trip(rule_class):
    rule = rule_class()
    alpha, avg = torch.tensor(1.0), torch.tensor(float("nan"))
    for c in (3.0, 2.0, 1.5):
        alpha, avg = rule(alpha, avg, torch.tensor(c), 1.0)
    copy = rule_class()
    copy.load_state_dict(rule.state_dict())
    after_copy = copy(alpha, avg, torch.tensor(1.2), 1.0)
    after_rule = rule(alpha, avg, torch.tensor(1.2), 1.0)
    assert all(torch.equal(a, b) for a, b in zip(after_copy, after_rule, strict=True))  # same bits


def test_a_fixed_alpha_model_runs_no_rule_and_its_summary_lists_none():
    from lightning.pytorch.utilities.model_summary import ModelSummary

    from consistency_vae.model import ConsistencyVAE

    fixed = ConsistencyVAE(alpha_mode="fixed")
    assert fixed.multiplier is None
    assert "multiplier" not in str(ModelSummary(fixed)) and "DualAscent" not in str(ModelSummary(fixed))
    assert isinstance(ConsistencyVAE(alpha_mode="constrained").multiplier, DualAscent)
