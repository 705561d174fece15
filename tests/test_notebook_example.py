"""docs/evaluation.md's notebook example runs, and gives evaluate's numbers (issue 21, section 6)."""

import json
import re
import subprocess
import sys

import pytest

from tests import cli_runs
from tests.conftest import ROOT

CKPT = "runs/mnist_alpha1.0_seed0/version_0/checkpoints/last.ckpt"


def notebook_example() -> str:
    text = (ROOT / "docs/evaluation.md").read_text()
    section = text.split("**In a notebook:", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_the_notebook_example_gives_evaluates_numbers(tmp_path, data_dir):
    code, log = cli_runs.run(tmp_path, "fit", "--config", cli_runs.BASE, f"--data.data_dir={data_dir}",
                             "--data.subset=512", "--trainer.max_epochs=1")
    assert code == 0, log[-3000:]
    example = notebook_example()
    assert CKPT in example  # the path a default `make train` writes
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=cli_runs.ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    kl, elbo = map(float, re.search(r"KL\(z'\|\|z\) (\S+) nats, ELBO (\S+) nats", done.stdout).groups())
    assert (tmp_path / "latent_drift.png").stat().st_size > 10_000
    code, log = cli_runs.run(tmp_path, "evaluate", "--ckpt_path", CKPT, "--output", "eval",
                             "--iwae_k", "2", "--iwae_images", "8", "--quadrature_points", "101")  # 1/16 of
    # the default grid's log p(x), which the example does not print
    assert code == 0, log[-3000:]
    saved = json.loads((tmp_path / "eval/metrics.json").read_text())
    # float32 means over the same per-image values in other batchings: ~1e-6 relative, and the
    # example prints 4 and 3 decimals
    assert kl == pytest.approx(saved["kl_consistency"], abs=1e-4, rel=1e-5)
    assert elbo == pytest.approx(saved["elbo"], abs=1e-3, rel=1e-5)
