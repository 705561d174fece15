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


def test_subset_times_the_first_n_training_images_and_refuses_under_a_batch(monkeypatch, capsys, data_dir):
    """--subset N: both sides' epochs run over the first N training images (a quick check, which the
    README tour in tests/test_docs_commands.py runs); fewer than one batch is one line, before any work."""
    seen = []

    def lightning(dm, alpha, epochs, accelerator):
        seen.append(("fit", len(dm.train_set.images)))
        return [1.0]

    def plain(images, alpha, epochs):
        seen.append(("plain", len(images)))
        return [1.0]

    monkeypatch.setattr(bench, "lightning_epochs", lightning)
    monkeypatch.setattr(bench, "plain_epochs", plain)
    bench.main(["--epochs", "1", "--subset", "256", "--data_dir", str(data_dir)])
    assert set(seen) == {("fit", 256), ("plain", 256)} and len(seen) == 6  # 3 sides x (warm-up + 1)
    assert "bench: 256 images/epoch, batch 128" in capsys.readouterr().out
    with pytest.raises(bench.ConfigError, match=r"--subset 100: give at least 128 images, one batch"):
        bench.main(["--subset", "100", "--data_dir", str(data_dir)])
