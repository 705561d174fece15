"""`consistency-vae reproduce --pack N`: the reproduction trained as packs ends with the numbers of
the solo reproduction.

The quick reproduction (tests/reproduce_quick.py: 8 runs of 2 epochs on 1000 images, each a solo
`fit`) is run again with ``--pack 8``: the 6 runs of the claims file train as one pack, the 2
constrained runs as another (a pack never spans two sweep files). Every run is then evaluated by
the same code as a solo run's, from its packed checkpoint, and summarised.

The tolerance, from the arithmetic: after one epoch a member's weights and logged means agree with
its solo run's to float32 rounding (tests/test_packed.py, at most 5e-7 relative); after the 14
steps here the evaluation's means of float32 per-image terms agree to ``F32_REL`` (1e-5) of the
terms summed. Most metrics are such means, so 1e-5 of their own value. A gap (iwae_gap,
log_likelihood_gap, the amortisation and approximation gaps) is the difference of two such means of
size |ELBO| (about 300 nats here) that nearly cancel, so its rounding is 1e-5 of |ELBO|, not of the
gap: that is the absolute floor. Measured on the 2-core CPU: at most 6.9e-6 relative
(approximation_gap, 0.003 nats of about 300), every count and accuracy equal.
"""

import math
from pathlib import Path

import pytest

from consistency_vae.reproduction import reproduce
from tests.float32 import F32_REL
from tests.reproduce_quick import QUICK, evaluated, summary_of, trimmed
from tests.test_packed_sweep import records

NOT_NUMBERS = ("wall_seconds", "timings", "cpu_threads")  # how long it took and with what, not what it found


@pytest.fixture(scope="module")
def packed(tmp_path_factory, data_dir) -> Path:
    root = tmp_path_factory.mktemp("packed_reproduce")
    sweeps = [trimmed("reproduce_claims.yaml", root, model__latent_dim=[2], model__alpha=[0.0, 1.0, 3.0]),
              trimmed("reproduce_constrained_2d.yaml", root, model__kl_target=[1.0])]
    reproduce.main(["--output", str(root / "results"), "--runs_dir", str(root / "runs"),
                    "--data_dir", str(data_dir), "--sweeps", *sweeps, *QUICK, "--pack", "8"])
    return root


def numbers(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Every number of a metrics.json, nested settings flattened (``quadrature_settings.points``)."""
    found = {}
    for key, value in metrics.items():
        if key in NOT_NUMBERS:
            continue
        if isinstance(value, dict):
            found |= numbers(value, f"{prefix}{key}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            found[prefix + key] = value
    return found


@pytest.mark.slow
def test_each_run_trained_in_a_pack_of_its_sweep_file(packed):
    for sweep, size in (("reproduce_claims", 6), ("reproduce_constrained_2d", 2)):
        attempts = records(packed / "runs", sweep)
        assert len(attempts) == size and {r["status"] for r in attempts} == {"finished"}
        assert {r["pack"] for r in attempts} == {"0001"}  # one pack per file, all its runs
        assert {r["log"] for r in attempts} == {str(packed / f"runs/sweep-{sweep}/logs/pack-0001.log")}


@pytest.mark.slow
def test_the_packed_reproduction_has_the_solo_numbers(packed, quick):
    solo = {r["name"]: r for r in summary_of(quick["root"] / "results")["runs"]}
    runs = summary_of(packed / "results")["runs"]
    assert sorted(r["name"] for r in runs) == sorted(solo)
    for run in runs:
        ours, theirs = numbers(evaluated(run)), numbers(evaluated(solo[run["name"]]))
        assert ours.keys() == theirs.keys()
        scale = abs(theirs["elbo"])  # the size of the terms that a gap's two means share
        for key, expected in theirs.items():
            if isinstance(expected, int) or math.isnan(expected):  # counts, settings; NaN: not computed
                assert ours[key] == expected or math.isnan(ours[key]) and math.isnan(expected), key
            else:
                assert ours[key] == pytest.approx(expected, rel=F32_REL, abs=F32_REL * scale), \
                    (run["name"], key)
    assert (packed / "results/summary.md").is_file()
