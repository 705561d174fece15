"""`make bench` says when it misses its own targets, and how noisy its measurement was."""

import pytest

from consistency_vae import bench


def test_a_missed_target_is_said_with_the_spread_of_the_paired_epochs():
    plain = [1.00, 1.00, 1.00]
    fit_1 = [1.10, 1.194, 1.30]  # the median ratio misses 1.15; one paired epoch meets it
    fit_0 = [1.00, 1.00, 1.00]
    med, lines = bench.report(fit_1, plain, fit_0)
    text = "\n".join(lines)
    assert med["fit_over_plain"] == pytest.approx(1.194)
    assert "MISSED: ratio fit / plain 1.194 > target 1.15" in text
    assert "paired epochs: min 1.100 / median 1.194 / max 1.300" in text
    assert "from 1.100 to 1.300, across the target: too noisy to tell" in text
    assert "met: consistency overhead 1.194 <= target 1.5" in text


def test_a_clear_miss_is_not_called_noise_and_a_clear_pass_says_met():
    _, lines = bench.report([1.3, 1.4, 1.5], [1.0, 1.0, 1.0], [1.2, 1.2, 1.2])
    text = "\n".join(lines)
    assert "MISSED: ratio fit / plain 1.400 > target 1.15" in text and "too noisy" not in text
    _, lines = bench.report([1.0, 1.05, 1.1], [1.0, 1.0, 1.0], [0.9, 0.9, 0.9])
    assert "met: ratio fit / plain 1.050 <= target 1.15" in "\n".join(lines)
