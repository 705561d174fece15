"""A sweep's bookkeeping on disk, safe for several runners at once: ``RUNS_DIR/sweep-NAME/``.

- ``attempts/NNNN.json``: one record per run attempt (parameters, command, status, exit code, run
  folder, W&B folder, metric history). A runner creates its record file exclusively, so two runners
  never take the same number, and only that runner writes it afterwards.
- ``claims/KEY``: held while a grid point trains (``consistency_vae.sweep.claims``).
- ``logs/NNNN.log`` (the run's output) and ``logs/NNNN.json`` (its run folders, written by the run).
- ``manifest.json``: every record in one file, rewritten after each change by whichever runner
  changed something. It is a view for people and for ``sweep-report``; the records are the truth.

A grid point is known by its key: its parameters and the extra arguments given to every run
(``--trainer.max_epochs=5`` makes another run than the file's 25 epochs).
"""

import hashlib
import json
import os
import time
from pathlib import Path

from consistency_vae import atomic
from consistency_vae.sweep import claims

ID_DIGITS = 4


def read_json(path: Path) -> dict | None:
    """A JSON file another process writes, or None while it is missing or not yet whole (an empty
    record just created, a run-info file from a writer that is not atomic)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_key(params: dict, extra_args: list[str]) -> str:
    return json.dumps({"params": params, "extra_args": list(extra_args)}, sort_keys=True)


class SweepStore:
    def __init__(self, folder: Path, sweep_file: str, sweep_config: dict):
        self.folder = Path(folder)
        self.sweep_file, self.sweep_config = str(sweep_file), sweep_config
        for sub in ("attempts", "logs", "claims"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self.manifest = self.folder / "manifest.json"
        self.started = time.time()  # failures since then are not retried by this runner

    # --- records ---------------------------------------------------------------------------
    def new_record(self, params: dict, key: str, extra_args: list[str]) -> dict:
        """A new attempt, its id taken exclusively (the next free number)."""
        taken = [int(p.stem) for p in (self.folder / "attempts").glob("*.json") if p.stem.isdigit()]
        number = max(taken, default=0) + 1
        while True:
            path = self._record_path(f"{number:0{ID_DIGITS}d}")
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                break
            except FileExistsError:
                number += 1
        run_id = path.stem
        return {"id": run_id, "key": key, "params": params, "extra_args": list(extra_args),
                "status": "running", "log": str(self.folder / "logs" / f"{run_id}.log"),
                "runner": claims.holder_info(), "started": time.time()}

    def save(self, record: dict) -> None:
        atomic.write_text(self._record_path(record["id"]), json.dumps(record, indent=1))
        self.write_manifest()

    def records(self) -> list[dict]:
        """Every attempt, oldest first; a "running" one whose runner is gone reads as "killed"."""
        out = []
        for path in sorted((self.folder / "attempts").glob("*.json")):
            try:
                touched = path.stat().st_mtime
            except FileNotFoundError:
                continue
            if (record := read_json(path)) is None:  # just created, not yet written
                continue
            if "run_dir" not in record:  # the run said where it writes, once it has
                record.update(read_json(self.folder / "logs" / f"{record['id']}.json") or {})
            if record["status"] == "running" and not claims.is_alive(record["runner"], touched):
                record["status"] = "killed"
            out.append(record)
        return out

    def heartbeat(self, record: dict) -> None:
        claims.heartbeat(self._record_path(record["id"]))

    def write_manifest(self) -> None:
        manifest = {"sweep_file": self.sweep_file, "sweep": self.sweep_config, "runs": self.records()}
        atomic.write_text(self.manifest, json.dumps(manifest, indent=1))

    # --- grid points -------------------------------------------------------------------------
    def claim_path(self, key: str) -> Path:
        return self.folder / "claims" / hashlib.sha1(key.encode()).hexdigest()[:16]

    def state(self, key: str, records: list[dict] | None = None) -> tuple[str, dict | None]:
        """What to do with a grid point: ("finished" | "failed here" | "todo", an earlier attempt:
        the finished one, the failed one, or the one to resume from).

        "failed here": it failed since this runner started (in this runner or a concurrent one);
        as in a W&B sweep, one invocation does not retry it, the next one does.
        """
        mine = [r for r in (self.records() if records is None else records) if r.get("key") == key]
        if any(r["status"] == "finished" for r in mine):
            return "finished", next(r for r in mine if r["status"] == "finished")
        latest = mine[-1] if mine else None
        if latest and latest["status"] == "failed" and latest.get("ended", 0) >= self.started:
            return "failed here", latest
        # to resume from: the latest attempt that got as far as a run folder
        return "todo", next((r for r in reversed(mine) if r.get("run_dir")), latest)

    def _record_path(self, run_id: str) -> Path:
        return self.folder / "attempts" / f"{run_id}.json"
