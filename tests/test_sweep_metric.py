"""The metric each sweep file optimises (metric.name) is a key that a real run logs, and the
constrained objective is what it claims to be."""

import csv
import math
import os
from pathlib import Path

import pytest

from consistency_vae.alpha_choice import constrained_elbo
from consistency_vae.cli import cli_main
from consistency_vae.sweep.sweep_file import load_sweep
from consistency_vae.sweep_objective import ConstrainedELBO
from tests.conftest import ROOT
from tests.sweep_files import SWEEPS, TINY, cli_args, ids


# --- the metric --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def logged_rows(tmp_path_factory, data_dir):
    """metrics.csv rows of a real tiny run of each distinct sweep command, keyed by command."""
    cache = {}

    def rows(sweep_file: Path) -> list[dict]:
        args = cli_args(sweep_file)  # one run per distinct command, whatever its parameters
        params = tuple(f"--{p}=" for p in load_sweep(sweep_file)["parameters"])
        key = tuple(a for a in args if not a.startswith(params))
        if key not in cache:
            out = tmp_path_factory.mktemp("metric_run")
            cwd = os.getcwd()
            os.chdir(ROOT)
            try:
                cli_main([*args, f"--trainer.default_root_dir={out}", f"--data.data_dir={data_dir}", *TINY])
            finally:
                os.chdir(cwd)
            (metrics_csv,) = out.rglob("metrics.csv")
            with metrics_csv.open() as f:
                cache[key] = list(csv.DictReader(f))
        return cache[key]

    return rows


@pytest.mark.parametrize("sweep_file", SWEEPS, ids=ids)
def test_metric_name_is_a_key_a_real_run_logs(sweep_file, logged_rows):
    metric = load_sweep(sweep_file)["metric"]["name"]
    rows = logged_rows(sweep_file)
    assert metric in rows[0], f"{metric} not among the logged keys {sorted(rows[0])}"
    values = [row[metric] for row in rows if row[metric]]
    assert values and all(math.isfinite(float(v)) for v in values)


def test_constrained_elbo_is_elbo_minus_the_penalty_on_the_logged_values(logged_rows):
    rows = logged_rows(ROOT / "sweeps/alpha_mnist.yaml")
    (val,) = [r for r in rows if r["val/elbo"]]
    (objective,) = [r for r in rows if r["val/constrained_elbo"]]
    elbo, kl = float(val["val/elbo"]), float(val["val/kl_consistency"])
    assert float(objective["val/constrained_elbo"]) == pytest.approx(elbo - 100.0 * max(0.0, kl - 1.0))


@pytest.mark.parametrize("elbo, kl, expected", [(-90.0, 0.5, -90.0), (-90.0, 1.0, -90.0),
                                                (-90.0, 1.25, -115.0), (-80.0, 3.0, -280.0)])
def test_constrained_elbo_by_hand(elbo, kl, expected):
    import torch

    value = constrained_elbo(torch.tensor(elbo), torch.tensor(kl), kl_target=1.0, penalty=100.0)
    assert value.item() == pytest.approx(expected)


def test_constrained_elbo_refuses_a_non_positive_budget():
    from consistency_vae.errors import ConfigError

    with pytest.raises(ConfigError, match="kl_target > 0"):
        ConstrainedELBO(kl_target=0.0)
