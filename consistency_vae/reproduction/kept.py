"""The runs an earlier reproduction recorded in ``--output``'s summary.json, kept by the next one.

A reproduction takes hours on a CPU, and its machine may not last that long: run folders live on
scratch space, a preemptible node, a session that ends. What outlives them is the output folder
(``results/``, committed or copied): its summary.json holds one record per run, every number the
summary needs (``summary.record``), under the run's sweep key (its grid point and the command's
extra arguments, ``store.run_key``). So ``reproduce`` with the same ``--output`` keeps those records
and trains and evaluates only the grid points without one: a reproduction can be done in pieces,
on different machines, and each piece adds its runs to the same results. A record is kept only if
its run was trained with this command's options (``--epochs``, ``--subset``) and evaluated with its
flags (IWAE K and images, the gaps' images, the quadrature grid); otherwise the command stops
before any work and says which differ.

Pieces may end at the same time into one --output (a shared file system): each reads the latest
records again and writes the summary under a lock on the folder (``writing``), so neither drops
the other's runs.
"""

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from consistency_vae.errors import UserError

# The evaluation flags a kept record must share with this command (summary.run_config's keys).
EVALUATION = ("iwae_k", "iwae_images", "gap_images", "quadrature_points")


def evaluation(args) -> dict:
    return {name: getattr(args, name) for name in EVALUATION}


def records(output: Path, args, extra_args: list[str]) -> dict[str, dict]:
    """{sweep key: run record} of ``output``/summary.json's runs, which this command keeps: none if
    there is no summary.json, or if it came from --from-runs (its runs have no sweep key). Runs
    trained with other extra arguments (``--epochs``, ``--subset``: another length of training) or
    evaluated with other flags stop the command: one summary is one experiment."""
    path = Path(output) / "summary.json"
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
        config, runs = old["config"], old["runs"]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path} is not a summary.json that reproduce wrote ({type(err).__name__}: {err}): "
                        "move it away, or give another --output") from None
    keyed = {r["key"]: r for r in runs if isinstance(r, dict) and r.get("key")}
    if not keyed:  # an older summary, or one of gathered folders: nothing to keep
        return {}
    if others := {tuple(json.loads(key)["extra_args"]) for key in keyed} - {tuple(extra_args)}:
        raise UserError(f"--output {output} holds runs of an earlier reproduction trained with other "
                        f"options ({' '.join(min(others)) or 'none'} there, {' '.join(extra_args) or 'none'} "
                        "here; from --epochs, --subset, --data_dir): give the same options to go on with it, "
                        "or another --output to start a new one")
    theirs = {name: config.get(name) for name in EVALUATION}
    if theirs != (ours := evaluation(args)):
        differ = ", ".join(f"--{n} {theirs[n]} there, {ours[n]} here"
                           for n in EVALUATION if theirs[n] != ours[n])
        raise UserError(f"--output {output} holds {len(keyed)} runs of an earlier reproduction, evaluated "
                        f"otherwise ({differ}): give the same flags to go on with it, or another --output "
                        "to start a new one")
    return keyed


def refuse_replacing(output: Path, source: str) -> None:
    """Stop a command that would write ``output``'s summary from other records (``source``:
    --from-runs, or --from-summary of another file) where its summary.json holds the records of a
    reproduction in pieces: they may be the only copy of its runs (the run folders gone)."""
    try:
        runs = json.loads((Path(output) / "summary.json").read_text())["runs"]
    except (OSError, ValueError, KeyError, TypeError):  # none, or not one of ours: nothing to lose
        return
    if keyed := [r for r in runs if isinstance(r, dict) and r.get("key")]:
        raise UserError(f"--output {output} holds the records of {len(keyed)} runs of a reproduction in "
                        f"pieces (`reproduce --output {output}` adds to them); {source} would replace them "
                        "with others: give another --output, or move its summary.json away first")


def merged(kept: dict[str, dict], fresh: list[dict]) -> list[dict]:
    """The kept records and this command's, one per run key: this command's where both have one."""
    ours = {r["key"] for r in fresh if r.get("key")}
    return [r for key, r in kept.items() if key not in ours] + fresh


LOCK = ".summary.lock"


@contextmanager
def writing(output: Path) -> Iterator[None]:
    """Hold ``output``/.summary.lock (flock: released if this process dies) while reading the latest
    records and writing the summary from them."""
    output.mkdir(parents=True, exist_ok=True)
    with open(output / LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
