"""Claim files: two runners sharing one runs folder never train the same run twice.

A runner claims a run by creating ``CLAIMS/KEY`` with ``O_CREAT | O_EXCL``, which one process
wins on a local file system and on NFSv3+; the file holds who claimed it (host, pid, time). It
keeps the claim fresh by touching the file while the run trains (``heartbeat``), and deletes it
when the run has ended and its outcome is recorded (``release``).

A claim whose holder is gone is stale and can be taken over: on the same host, when its pid no
longer runs; from another host (a SLURM job killed at its time limit), when the file has not been
touched for ``STALE_S`` seconds. Taking over happens under a short ``KEY.reclaim`` lock directory
(``os.mkdir`` is atomic too), so two runners that both see the stale claim never both win.
"""

import contextlib
import json
import os
import socket
import time
from pathlib import Path

HEARTBEAT_S = 30.0  # a running runner touches its claims this often
STALE_S = 600.0  # a claim from another host untouched this long is stale (20 missed heartbeats)
WRITING_S = 10.0  # an empty claim this old was left by a process that died creating it
RECLAIM_LOCK_S = 60.0  # a reclaim lock this old was left by a process that died holding it


def holder_info() -> dict:
    """Who this process is, as written into its claims and run records."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "claimed": time.time()}


def pid_running(pid: int) -> bool:
    if pid <= 0:  # os.kill(0 or -N) would signal process groups, not one process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def is_alive(info: dict, touched: float, now: float | None = None) -> bool:
    """Whether the holder ``info`` (host, pid) of a file last touched at ``touched`` still runs."""
    now = time.time() if now is None else now
    if info.get("writing"):  # created an instant ago, its holder still writing it
        return now - touched < WRITING_S
    if info.get("host") == socket.gethostname():
        return pid_running(int(info.get("pid", -1)))
    return now - touched < STALE_S


def read(path: Path) -> tuple[dict, float] | None:
    """The holder recorded in a claim file and its mtime, or None if there is no claim.

    A claim being written (empty for an instant after its exclusive creation) reads as
    ``{"writing": True}``.
    """
    try:
        touched = path.stat().st_mtime
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text), touched
    except json.JSONDecodeError:
        return {"writing": True}, touched


def _create(path: Path, payload: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f)
    return True


def claim(path: Path, payload: dict | None = None) -> bool:
    """Claim ``path`` for this process; True if it is now ours, False if a live runner holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**holder_info(), **(payload or {})}
    if _create(path, payload):
        return True
    held = read(path)
    if held is not None and is_alive(*held):
        return False
    lock = path.with_name(path.name + ".reclaim")
    try:
        os.mkdir(lock)
    except FileExistsError:  # another runner is taking it over right now
        if time.time() - lock.stat().st_mtime > RECLAIM_LOCK_S:
            os.rmdir(lock)  # left by a process that died inside the few lines below
        return False
    try:
        held = read(path)  # again, under the lock: it may have been taken over meanwhile
        if held is not None and is_alive(*held):
            return False
        path.unlink(missing_ok=True)
        return _create(path, payload)
    finally:
        os.rmdir(lock)


def heartbeat(path: Path) -> None:
    """Mark a claim of ours as alive (its mtime), so other hosts do not take it over."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)


def release(path: Path) -> None:
    """Give a claim of ours back; a claim someone else took over meanwhile is left alone."""
    held = read(path)
    if held and held[0].get("pid") == os.getpid() and held[0].get("host") == socket.gethostname():
        path.unlink(missing_ok=True)
