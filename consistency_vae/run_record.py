"""One record of a run, however many attempts it took: its metrics, merged, its status, and
its W&B run.

A resumed run (``fit --ckpt_path last``) writes into the same folder. The earlier attempts' logs
are kept as ``metrics.attemptK.csv`` (``run_folders.keep_previous_attempt``) and CSVLogger starts
a new ``metrics.csv``. An attempt resumed from a checkpoint redoes the steps after that
checkpoint, so the steps an earlier attempt logged after it appear twice. ``merged_rows`` keeps,
of each earlier attempt, only the rows before the first (epoch, step) the next attempt logged:
one row per logged moment, the resumed attempt's where they overlap.

- ``metrics.merged.csv``: that record, written by the CLI at the end of every ``fit``, however it
  ends. Readers call ``merged_rows``, which is the same record, and also right after a SIGKILL.
- ``status.json``: ``running`` while ``fit`` runs, then ``finished``, ``interrupted`` (Ctrl-C,
  SIGTERM: resumable) or ``failed`` (an error), with the epochs done. A run still ``running``
  whose process is gone was killed (SIGKILL, power loss): it resumes like an interrupted one.
- ``wandb_id``: the id of the run's W&B run. ``set_wandb_run_id`` gives it to the WandbLogger of
  a resumed fit before the logger is built; WandbLogger opens its run with resume="allow", so the
  resumed attempt logs into the same W&B run (offline: ``wandb sync`` uploads the attempts' folders,
  which share the id, into that one run, in order).
"""

import csv
import io
import json
import os
import re
import secrets
import string
from pathlib import Path

from jsonargparse import Namespace

from consistency_vae import atomic

MERGED = "metrics.merged.csv"
STATUS = "status.json"
WANDB_ID = "wandb_id"
_ATTEMPT = re.compile(r"metrics\.attempt(\d+)\.csv")


def attempt_files(folder: Path) -> list[Path]:
    """The metrics logs of every attempt, oldest first: metrics.attempt1.csv, ..., metrics.csv."""
    folder = Path(folder)
    kept = sorted((int(m.group(1)), p) for p in folder.glob("metrics.attempt*.csv")
                  if (m := _ATTEMPT.fullmatch(p.name)))
    current = [folder / "metrics.csv"] if (folder / "metrics.csv").is_file() else []
    return [p for _, p in kept] + current


def _read(path: Path) -> list[dict[str, str]]:
    """The rows of one CSV log, empty cells left out."""
    with path.open(newline="") as f:
        return [{k: v for k, v in row.items() if k and v not in (None, "")} for row in csv.DictReader(f)]


def _moment(row: dict[str, str]) -> tuple[int, int]:
    return int(float(row.get("epoch", -1))), int(float(row.get("step", -1)))


def is_final_test(row: dict[str, str]) -> bool:
    """The row of fit's closing test of its best checkpoint: the only one with ``test/loss`` (the
    per-epoch test rows of TestSetConsistency hold test/elbo and test/kl_consistency only). Its
    epoch is the best checkpoint's; in runs older than that labelling, one past the last epoch."""
    return "test/loss" in row


def merged_rows(folder: Path) -> list[dict[str, str]]:
    """The run's metrics over all its attempts, each logged (epoch, step) once; [] if none."""
    merged: list[dict[str, str]] = []
    for path in attempt_files(folder):
        rows = _read(path)
        if rows:  # this attempt redid everything from its first logged moment on
            first = min(_moment(r) for r in rows)
            merged = [r for r in merged if _moment(r) < first]
        merged += rows
    return merged


def write_merged(folder: Path) -> Path | None:
    """Write ``merged_rows`` to ``folder/metrics.merged.csv`` (columns as CSVLogger sorts them)."""
    rows = merged_rows(folder)
    if not rows:
        return None
    keys = sorted(set().union(*rows))
    path, text = Path(folder) / MERGED, io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, text.getvalue())  # a reader never sees half a file
    return path


def write_status(folder: Path, status: str, **details) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    atomic.write_text(Path(folder) / STATUS, json.dumps({"status": status, **details}) + "\n")


def read_status(folder: Path) -> dict:
    """The folder's status.json, or {} when the run predates it."""
    path = Path(folder) / STATUS
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def new_wandb_id() -> str:
    """8 characters of [a-z0-9], the shape of the ids wandb makes itself."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def set_wandb_run_id(trainer_config: Namespace, resumed_folder: Path | None) -> None:
    """Give each WandbLogger of a fit config (in place, before it is built) the id of its W&B run:
    the one in ``resumed_folder/wandb_id`` when fit resumes that folder, else a new one, which the
    run folder keeps (``RecordRunStart``). An id the user chose (the logger's ``id`` or
    ``version``, or WANDB_RUN_ID, which a W&B sweep agent sets) is left alone."""
    if os.environ.get("WANDB_RUN_ID"):
        return
    loggers = trainer_config.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if not isinstance(logger, Namespace) or not str(logger.get("class_path")).endswith("WandbLogger"):
            continue
        if logger.init_args.get("id") or logger.init_args.get("version"):
            continue
        kept = Path(resumed_folder) / WANDB_ID if resumed_folder is not None else None
        logger.init_args.id = kept.read_text().strip() if kept and kept.is_file() else new_wandb_id()
