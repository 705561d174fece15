"""The sweep runner's runs as child processes: no run outlives its runner unnoticed.

- Every exit path the runner can catch stops its runs: Ctrl-C, an error, and SIGTERM or SIGHUP (a
  job scheduler's stop, a closed terminal), which ``stop_on_signals`` turns into ``Stopped`` so that
  they take the same path. ``stop`` sends SIGTERM (Lightning saves ``last.ckpt`` at the next batch
  and exits 143), waits, and SIGKILLs a run still there after ``STOP_GRACE_S``.
- SIGKILL cannot be caught. On Linux each run asks the kernel for SIGTERM when the runner dies
  (``prctl(PR_SET_PDEATHSIG)``), so it stops as above. A run slow to stop, or one on a system
  without that signal, trains on as an orphan: its claim names it (``claims.add_child``), so no
  other runner resumes into the folder it still writes until it has ended.
"""

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_GRACE_S = 60.0  # a run told to stop has this long to save its checkpoint; SLURM's KillWait is 30 s
CAUGHT = (signal.SIGTERM, signal.SIGHUP)


class Stopped(BaseException):
    """The runner got SIGTERM or SIGHUP. A BaseException, as KeyboardInterrupt is, so that no
    ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def _raise_stopped(signum: int, frame) -> None:
    for s in CAUGHT:  # once: a second signal must not cut short the stop that this one starts
        signal.signal(s, signal.SIG_IGN)
    raise Stopped(signum)


def stop_on_signals() -> Callable[[], None]:
    """From now on, SIGTERM and SIGHUP raise ``Stopped`` (in the main thread: Python sets handlers
    only there); call what it returns to restore the handlers before."""
    on_main = threading.current_thread() is threading.main_thread()
    before = {s: signal.signal(s, _raise_stopped) for s in CAUGHT} if on_main else {}

    def restore() -> None:
        for s, handler in before.items():
            signal.signal(s, handler)
    return restore


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Within it, SIGINT, SIGTERM and SIGHUP are ignored: a stop in progress (at most
    ``STOP_GRACE_S``) is not itself cut short, which would leave runs unrecorded."""
    on_main = threading.current_thread() is threading.main_thread()
    before = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, *CAUGHT)} if on_main else {}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _die_with(parent: int, prctl: Callable) -> Callable[[], None]:
    def in_child() -> None:  # between fork and exec: only a system call, no imports
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # kept across exec
        if os.getppid() != parent:  # the runner died before the call above: stop now
            os.kill(os.getpid(), signal.SIGTERM)
    return in_child


def start(command: list[str], log, env: dict) -> subprocess.Popen:
    """Start one run, its output (stdout and stderr) into the open file ``log``; on Linux it gets
    SIGTERM when the thread that started it (the runner's main thread) dies."""
    preexec = None
    if sys.platform.startswith("linux"):
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: the child only calls it
        preexec = _die_with(os.getpid(), prctl)
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec)


def stop(procs: list[subprocess.Popen], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM every run still running, wait up to ``grace`` seconds in all, then SIGKILL the rest;
    every run has ended (and been reaped) when this returns."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
