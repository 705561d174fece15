"""The sweep runner when things die: a runner SIGKILLed or stopped by a signal while its runs
train, a bug in the runner, runners reading each other's half-written files, and the claim race.

The runs are a stand-in for ``consistency-vae fit`` that keeps the runner's contract with a run and
nothing else: it writes the run-info JSON ($CONSISTENCY_VAE_RUN_INFO), and ``config.yaml``,
``status.json`` and (with $LAST_CKPT) a ``last.ckpt`` of its one epoch in its run folder; it stops on
SIGTERM with 143 as Lightning does, and trains until $TRAIN_SECONDS pass or the test creates
``release``. Runners are real processes (``python -m consistency_vae sweep``) where the
point is a process that dies or two that race; every wait has a deadline.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from consistency_vae.sweep import claims, runner
from consistency_vae.sweep.runner import run_sweep
from consistency_vae.sweep.store import SweepStore, run_key
from tests.conftest import ROOT

DEAD_PID = 2**22 + 7  # above the default pid_max of 2**22: never a running process
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="/proc, PR_SET_PDEATHSIG: Linux")
STAND_IN = """import json, os, signal, sys, time
from pathlib import Path

a = next(w for w in sys.argv[1:] if w.startswith("--a="))
here = Path(os.environ["STAND_IN_DIR"])
folder = here / "runs" / a[2:].replace("=", "") / "version_0"


def status(value):  # as run_record.write_status
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "status.json").write_text(json.dumps({"status": value}))


def on_sigterm(signum, frame):
    with open(here / "sigterm.log", "a") as f:
        f.write(f"{os.getpid()}\\n")
    if not os.environ.get("SLOW_TO_STOP"):  # else: busy, as a run saving a large checkpoint
        status("interrupted")
        sys.exit(143)


signal.signal(signal.SIGTERM, on_sigterm)
status("running")
(folder / "config.yaml").write_text(json.dumps({"trainer": {"max_epochs": 1}}))  # JSON is YAML
info = json.dumps({"run_dir": str(folder), "wandb_run_dir": None})
half = len(info) // 2 if os.environ.get("HALF_WRITTEN_INFO") else len(info)
with open(os.environ["CONSISTENCY_VAE_RUN_INFO"], "w") as f:
    f.write(info[:half])  # HALF_WRITTEN_INFO: the rest only at the end, as a writer cut off would
    f.flush()
    with open(here / "trained.log", "a") as log:
        log.write(f"{a} {os.getpid()}\\n")
    quick = a[4:] in os.environ.get("QUICK", "").split(",")
    end = time.time() + (0 if quick else float(os.environ.get("TRAIN_SECONDS", "0")))
    while time.time() < end and not (here / "release").exists():
        time.sleep(0.05)
    f.write(info[half:])
if os.environ.get("LAST_CKPT"):  # the one epoch is done, as Lightning's last.ckpt says
    import torch

    (folder / "checkpoints").mkdir(exist_ok=True)
    torch.save({"loops": {"fit_loop": {"epoch_progress": {"current": {"processed": 1}}}}, "epoch": 0,
                "global_step": 3}, folder / "checkpoints" / "last.ckpt")
status("finished")
"""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (dead, its exit status not yet collected) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.1)


@pytest.fixture
def sweep(tmp_path, monkeypatch):
    """A grid sweep over ``a`` whose runs are the stand-in; every process it starts is ended after."""
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    monkeypatch.setenv("STAND_IN_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    runners: list[subprocess.Popen] = []

    class Sweep:
        runs = tmp_path / "runs"
        records = tmp_path / "runs" / "sweep-grid"

        def file(self, values: list[int]) -> Path:
            path = tmp_path / "grid.yaml"
            path.write_text(yaml.safe_dump({
                "name": "grid", "method": "grid", "parameters": {"a": {"values": values}},
                "command": ["${env}", "${interpreter}", str(tmp_path / "stand_in.py"), "${args}"]}))
            return path

        def start(self, values: list[int], parallel: int = 1) -> subprocess.Popen:
            """A runner in its own process group, its output in runner<N>.log."""
            command = [sys.executable, "-m", "consistency_vae", "sweep", str(self.file(values)),
                       "--runs_dir", str(self.runs), "--parallel", str(parallel)]
            with open(tmp_path / f"runner{len(runners)}.log", "w") as log:  # the runner keeps its own copy
                proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            runners.append(proc)
            return proc

        def output(self, proc: subprocess.Popen) -> str:
            return (tmp_path / f"runner{runners.index(proc)}.log").read_text()

        def trained(self) -> list[tuple[str, int]]:
            """(--a=N, pid) of every run that started training, in order."""
            log = tmp_path / "trained.log"
            lines = log.read_text().splitlines() if log.is_file() else []
            return [(a, int(pid)) for a, pid in (line.split() for line in lines)]

        def release(self) -> None:
            (tmp_path / "release").touch()

        def told_to_stop(self) -> list[int]:
            log = tmp_path / "sigterm.log"
            return [int(p) for p in log.read_text().split()] if log.is_file() else []

        def attempts(self) -> list[dict]:
            return [json.loads(p.read_text()) for p in sorted((self.records / "attempts").glob("*.json"))]

    yield Sweep()
    for proc in runners:  # whatever a failed test left: the runners' groups hold their runs too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for _, pid in Sweep().trained():  # runs of in-process runners
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


# --- claims: the race on the reclaim lock; a claim is stale only when nothing of it runs -----
@pytest.mark.parametrize("vanishes_in", ["mkdir", "rmdir"])
def test_a_reclaim_lock_that_vanishes_under_us_means_try_again(tmp_path, monkeypatch, vanishes_in):
    """Another runner's reclaim lock is gone by the time we look at it (it took the claim over or
    gave up, and removed its lock): the claim is tried again, not a crash."""
    path = tmp_path / "k"
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": DEAD_PID}))  # stale
    lock = path.with_name("k.reclaim")
    real_mkdir, real_rmdir, calls = os.mkdir, os.rmdir, []

    def mkdir(p, *args, **kwargs):  # the lock is held by another runner, which removes it at once
        calls.append(("mkdir", Path(p)))
        if vanishes_in == "mkdir" and calls.count(("mkdir", lock)) == 1:
            raise FileExistsError(17, "File exists", str(p))
        return real_mkdir(p, *args, **kwargs)

    def rmdir(p, *args, **kwargs):  # a lock left too long: another runner removes it first
        calls.append(("rmdir", Path(p)))
        real_rmdir(p, *args, **kwargs)
        if vanishes_in == "rmdir" and calls.count(("rmdir", lock)) == 1:
            raise FileNotFoundError(2, "No such file or directory", str(p))

    if vanishes_in == "rmdir":
        lock.mkdir()
        old = time.time() - claims.RECLAIM_LOCK_S - 5
        os.utime(lock, (old, old))
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "rmdir", rmdir)
    assert claims.claim(path)
    assert json.loads(path.read_text())["pid"] == os.getpid() and not lock.exists()


@linux_only
def test_a_claim_is_stale_only_when_its_runner_and_its_run_are_both_gone(tmp_path):
    run = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = {"host": socket.gethostname(), "pid": DEAD_PID, "child": claims.process_info(run.pid)}
        assert claims.is_alive(holder, time.time())  # the runner is gone, its run trains on
        reused = {**holder, "child": {**holder["child"], "start": holder["child"]["start"] + 1}}
        assert not claims.is_alive(reused, time.time())  # that pid is another process now
    finally:
        run.kill()
        run.wait()
    assert not claims.is_alive(holder, time.time())


@linux_only
def test_a_zombie_is_not_a_running_process():
    """A run whose runner was SIGKILLed is a child of init; where init does not collect its exit
    status (a container's), the dead run stays a zombie, which still answers kill(pid, 0)."""
    done = subprocess.Popen(["true"])
    wait_for(lambda: not alive(done.pid), 10, "`true` to exit")
    assert not claims.pid_running(done.pid)
    done.wait()


def test_a_file_written_atomically_is_whole_or_the_old_one(tmp_path, monkeypatch):
    from consistency_vae import atomic

    path = tmp_path / "info.json"
    atomic.write_text(path, '{"run_dir": "old"}')

    def cut_off(src, dst):  # the writer dies between writing and moving into place
        raise OSError("killed")

    monkeypatch.setattr(os, "replace", cut_off)
    with pytest.raises(OSError, match="killed"):
        atomic.write_text(path, '{"run_dir": "new"}')
    assert json.loads(path.read_text()) == {"run_dir": "old"} and os.listdir(tmp_path) == ["info.json"]


# --- half-written files --------------------------------------------------------------------
def test_a_half_written_run_info_reads_as_not_yet_written(tmp_path):
    store = SweepStore(tmp_path, "grid.yaml", {})
    record = store.new_record({"a": 1}, run_key({"a": 1}, []), [])
    store.save(record)
    (tmp_path / "logs" / f"{record['id']}.json").write_text('{"run_dir": "/runs/a1/vers')  # mid-write
    (read,) = store.records()
    assert read["status"] == "running" and "run_dir" not in read
    assert store.state(record["key"])[0] == "todo"


def test_two_runners_read_each_other_s_half_written_run_info(sweep, monkeypatch):
    """The second runner starts while the first one's runs are writing their run-info files
    (kept half-written here for as long as each run trains): both finish the sweep, each grid
    point trained once, and every record has its run folder."""
    monkeypatch.setenv("TRAIN_SECONDS", "120")  # until the test releases them
    monkeypatch.setenv("HALF_WRITTEN_INFO", "1")
    first = sweep.start([1, 2, 3, 4], parallel=2)
    wait_for(lambda: sweep.trained() or first.poll() is not None, 60, "the first runner's first run")
    second = sweep.start([1, 2, 3, 4], parallel=2)
    wait_for(lambda: len(sweep.trained()) == 4 or first.poll() is not None or second.poll() is not None, 90,
             "four runs training at once (or a runner to exit)")
    sweep.release()
    codes = [p.wait(timeout=60) for p in (first, second)]
    assert codes == [0, 0], sweep.output(first) + sweep.output(second)
    assert sorted(a for a, _ in sweep.trained()) == ["--a=1", "--a=2", "--a=3", "--a=4"]  # each once
    records = sweep.attempts()
    assert [r["status"] for r in records] == ["finished"] * 4
    assert all(Path(r["run_dir"]).name == "version_0" for r in records)
    assert len({r["runner"]["pid"] for r in records}) == 2  # both runners took part


# --- a runner that dies ----------------------------------------------------------------------
@linux_only
def test_a_sigkilled_runner_s_run_is_neither_trained_beside_nor_twice(sweep, monkeypatch, capsys):
    """SIGKILL the runner while its run trains. The run, told to stop by the parent-death signal
    but slow to do so, trains on: a second runner must leave it alone (its claim is not stale while
    the run lives), and once it has ended, a third runner counts it as finished, with no training."""
    monkeypatch.setenv("TRAIN_SECONDS", "120")
    monkeypatch.setenv("SLOW_TO_STOP", "1")
    monkeypatch.setenv("LAST_CKPT", "1")
    first = sweep.start([1])
    wait_for(lambda: sweep.trained() or first.poll() is not None, 60, "the run to start")
    first.kill()
    first.wait(timeout=10)
    ((_, orphan),) = sweep.trained()
    assert alive(orphan)
    second = run_sweep(str(sweep.file([1])), runs_dir=str(sweep.runs))
    assert second["finished"] == 0 and second["skipped"] == {"claimed": 1}
    assert len(sweep.trained()) == 1 and alive(orphan)  # nothing trained beside the orphan
    assert sweep.told_to_stop() == [orphan]  # PR_SET_PDEATHSIG: SIGTERM when its runner died
    sweep.release()
    wait_for(lambda: not alive(orphan), 30, "the orphan to end")
    third = run_sweep(str(sweep.file([1])), runs_dir=str(sweep.runs))
    assert third["finished"] == 1 and len(sweep.trained()) == 1  # counted, not trained again
    assert "had finished" in capsys.readouterr().out
    records = SweepStore(sweep.records, "grid.yaml", {}).records()
    assert [r["status"] for r in records] == ["killed", "finished"]
    assert records[1]["completes"] == records[0]["id"] and records[1]["run_dir"] == records[0]["run_dir"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGHUP, marks=pytest.mark.slow)])
def test_a_runner_stopped_by_a_signal_stops_its_runs_and_records_them(sweep, monkeypatch, signum):
    monkeypatch.setenv("TRAIN_SECONDS", "120")
    proc = sweep.start([1, 2], parallel=2)
    wait_for(lambda: len(sweep.trained()) == 2 or proc.poll() is not None, 60, "both runs to start")
    os.kill(proc.pid, signum)
    assert proc.wait(timeout=60) == 128 + signum, sweep.output(proc)
    assert not [pid for _, pid in sweep.trained() if alive(pid)]  # no run outlives its runner
    assert [(r["status"], r["exit_code"]) for r in sweep.attempts()] == [("interrupted", 143)] * 2
    assert not list((sweep.records / "claims").iterdir())  # the next runner resumes them at once
    assert f"stopped by {signal.Signals(signum).name}" in sweep.output(proc)


def test_an_error_in_the_runner_stops_its_runs_and_records_them(sweep, monkeypatch):
    monkeypatch.setenv("TRAIN_SECONDS", "120")
    monkeypatch.setenv("QUICK", "1")  # a=1 ends at once, a=2 trains on

    def broken(run, index, metric):
        raise RuntimeError("a bug in the runner")

    monkeypatch.setattr(runner, "_report", broken)
    with pytest.raises(RuntimeError, match="a bug in the runner"):
        run_sweep(str(sweep.file([1, 2])), runs_dir=str(sweep.runs), parallel=2)
    assert len(sweep.trained()) == 2 and not [pid for _, pid in sweep.trained() if alive(pid)]
    assert [r["status"] for r in sweep.attempts()] == ["finished", "interrupted"]
    assert not list((sweep.records / "claims").iterdir())
