"""The quick reproduction that tests/test_reproduce*.py read: the real `reproduce` command on a
tiny grid (8 runs of 2 epochs on 1000 images), trained and evaluated once per test session (the
``quick`` fixture, conftest.py)."""

import json
from pathlib import Path

import yaml

from consistency_vae.reproduction import reproduce

ROOT = Path(__file__).resolve().parents[1]

# --quadrature_points 101: log p(x) on a 101 x 101 grid (h = 0.1), 1/16 of the default 401's time. No
# test here reads its value, only that it is computed, passed on and the same in a worker: on these
# 2-epoch runs it is 0.09-0.11 nats below a 801 x 801 grid's (the default's: 0.013-0.017), whose
# integrand peaks at the grid's edge for most images (quadrature_settings' images_near_edge)
GRID = 101
QUICK = ["--datasets", "mnist", "--seeds", "2", "--epochs", "2", "--subset", "1000", "--iwae_k", "5",
         "--iwae_images", "50", "--gap_images", "10", "--parallel", "2", "--quadrature_points", str(GRID)]


def trimmed(sweep: str, tmp: Path, **values) -> str:
    """A copy of a reproduction sweep file with fewer values (the real command, a smaller grid)."""
    config = yaml.safe_load((ROOT / "sweeps" / sweep).read_text())
    for name, vals in values.items():
        config["parameters"][name.replace("__", ".")] = {"values": vals}
    path = tmp / sweep
    path.write_text(yaml.safe_dump(config))
    return str(path)


def quick_reproduction(root: Path, data_dir: Path) -> dict:
    """Alpha 0, 1, 3 at 2-D and one constrained epsilon, 2 seeds, 2 epochs: 8 runs, under ``root``."""
    sweeps = [trimmed("reproduce_claims.yaml", root, model__latent_dim=[2], model__alpha=[0.0, 1.0, 3.0]),
              trimmed("reproduce_constrained_2d.yaml", root, model__kl_target=[1.0])]
    argv = ["--output", str(root / "results"), "--runs_dir", str(root / "runs"), "--data_dir", str(data_dir),
            "--sweeps", *sweeps, *QUICK]
    reproduce.main(argv)
    return {"root": root, "argv": argv}


def summary_of(results: Path) -> dict:
    return json.loads((results / "summary.json").read_text())


def evaluated(run: dict) -> dict:
    return json.loads((Path(run["folder"]) / "eval/metrics.json").read_text())


