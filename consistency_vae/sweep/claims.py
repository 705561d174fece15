"""Claim files: two runners sharing one runs folder never train the same run twice.

A runner claims a run by linking a complete claim file to ``CLAIMS/KEY`` (``os.link`` fails if the
name exists: one process wins, on a local file system and on NFS), so a claim is never seen half
written; the file holds who claimed it (host, pid, time). Once the run's process is started, the
runner adds it to the claim (``add_child``). It keeps the claim fresh by touching the file while
the run trains (``heartbeat``), and deletes it when the run has ended and its outcome is recorded
(``release``).

A claim whose holder is gone is stale and can be taken over. On the same host: when neither the
runner nor its run still runs (a SIGKILLed runner's run trains on until it ends or stops, and a
second runner must not resume into the folder it writes); a pid counts only with the start time
it had (``/proc/PID/stat``), so a pid reused by another process is not the run, and a zombie is
dead. From another host (a SLURM job killed at its time limit), when the file has not been touched
for ``STALE_S`` seconds; that a run ends with its runner is the runner's job there
(``sweep.children``). Taking over happens under a short ``KEY.reclaim`` lock directory
(``os.mkdir`` is atomic too), so two runners that both see the stale claim never both win.
"""

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from consistency_vae import atomic

HEARTBEAT_S = 30.0  # a running runner touches its claims this often
STALE_S = 600.0  # a claim from another host untouched this long is stale (20 missed heartbeats)
WRITING_S = 10.0  # an empty claim this old was left by a process that died creating it
RECLAIM_LOCK_S = 60.0  # a reclaim lock this old was left by a process that died holding it


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of ``pid`` from /proc, or None without one."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after "(comm)"
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)


def process_info(pid: int) -> dict:
    """A process as claims and records name it: its pid and, where /proc has it, its start time."""
    stat = _proc_stat(pid)
    return {"pid": pid, "start": stat[1] if stat else None}


def holder_info() -> dict:
    """Who this process is, as written into its claims and run records."""
    return {"host": socket.gethostname(), **process_info(os.getpid()), "claimed": time.time()}


def pid_running(pid: int, start: int | None = None) -> bool:
    """Whether ``pid`` runs (a zombie does not), and, given ``start``, is the process that had
    that start time (not another one that reuses its pid)."""
    if pid <= 0:  # os.kill(0 or -N) would signal process groups, not one process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    stat = _proc_stat(pid)
    if stat is None:  # it ended a moment ago; or there is no /proc (macOS): kill() is all we know
        return not Path("/proc/self/stat").exists()
    state, started = stat
    return state not in ("Z", "X") and (start is None or started == start)


def is_alive(info: dict, touched: float, now: float | None = None) -> bool:
    """Whether the holder ``info`` of a file last touched at ``touched`` still runs: on this host,
    its runner (host, pid, start) or the run it started (``child``); elsewhere, its heartbeat."""
    now = time.time() if now is None else now
    if info.get("writing"):  # created an instant ago, its holder still writing it
        return now - touched < WRITING_S
    if info.get("host") == socket.gethostname():
        processes = [info, info["child"]] if info.get("child") else [info]
        return any(pid_running(int(p.get("pid", -1)), p.get("start")) for p in processes)
    return now - touched < STALE_S


def read(path: Path) -> tuple[dict, float] | None:
    """The holder recorded in a claim file and its mtime, or None if there is no claim.

    A claim being written reads as ``{"writing": True}``: claims appear whole (``_create``), except
    on a file system without hard links, or from an older runner, where the file is empty for an
    instant after its exclusive creation.
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
    """Create ``path`` holding ``payload``, unless it exists: True if this call created it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")  # ours alone: no one reads it
    tmp.write_text(json.dumps(payload))
    try:
        os.link(tmp, path)  # complete before it has its name; fails if the name exists
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: create exclusively, then write
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:  # read as {"writing": True} until written
            json.dump(payload, f)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def claim(path: Path, payload: dict | None = None) -> bool:
    """Claim ``path`` for this process; True if it is now ours, False if a live runner holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**holder_info(), **(payload or {})}
    while True:
        if _create(path, payload):
            return True
        held = read(path)
        if held is None:  # released since: claim it afresh
            continue
        if is_alive(*held):
            return False
        taken = _take_over(path, payload)
        if taken is not None:
            return taken


def _take_over(path: Path, payload: dict) -> bool | None:
    """Replace the stale claim ``path`` with ours under the reclaim lock: True if it is now ours,
    False if a live runner holds it, None if the lock vanished while we looked (try again)."""
    lock = path.with_name(path.name + ".reclaim")
    try:
        os.mkdir(lock)
    except FileExistsError:  # another runner is taking it over right now
        try:
            if time.time() - lock.stat().st_mtime <= RECLAIM_LOCK_S:
                return False
            os.rmdir(lock)  # left by a process that died inside the few lines below
        except FileNotFoundError:  # its holder has just removed it
            pass
        return None
    try:
        held = read(path)  # again, under the lock: it may have been taken over meanwhile
        if held is not None and is_alive(*held):
            return False
        path.unlink(missing_ok=True)
        return _create(path, payload)
    finally:
        with contextlib.suppress(FileNotFoundError):  # removed as left over: we were stopped > 60 s
            os.rmdir(lock)


def add_child(path: Path, pid: int) -> None:
    """Name the run's process (pid and start time) in our claim: while it runs, the claim is not
    stale, even if this runner is SIGKILLed."""
    held = read(path)
    if held and held[0].get("pid") == os.getpid() and held[0].get("host") == socket.gethostname():
        atomic.write_text(path, json.dumps({**held[0], "child": process_info(pid)}))


def heartbeat(path: Path) -> None:
    """Mark a claim of ours as alive (its mtime), so other hosts do not take it over."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)


def release(path: Path) -> None:
    """Give a claim of ours back; a claim someone else took over meanwhile is left alone."""
    held = read(path)
    if held and held[0].get("pid") == os.getpid() and held[0].get("host") == socket.gethostname():
        path.unlink(missing_ok=True)
