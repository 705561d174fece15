"""The offline sweep runner behind ``consistency-vae sweep`` and ``make reproduce``.

Each run is a subprocess running the command wandb's own code builds (``sweep.build_command``),
each with the CPU threads of threads.py's rule (``--threads``, else the user's OMP_NUM_THREADS,
else 1). Grid points are claimed before they train (``consistency_vae.sweep.claims``), so two
runners on one runs folder, on one machine or on many that share it, never train the same point
twice; a point whose earlier attempt was cut off resumes from its last.ckpt
(``consistency_vae.sweep.resume``). Records, logs and the manifest live in
``RUNS_DIR/sweep-NAME/`` (``consistency_vae.sweep.store``). However the runner ends (Ctrl-C,
SIGTERM, SIGHUP, an error), it stops its runs and records them; the runs of a SIGKILLed runner
are told to stop by the kernel (Linux), and while one still runs, no other runner resumes its
grid point (``consistency_vae.sweep.children``).
"""

import os
import subprocess
import time
from pathlib import Path

from consistency_vae import threads as cpu_threads
from consistency_vae.errors import ConfigError
from consistency_vae.run_record import read_status
from consistency_vae.sweep import best_run, children, claims, packs
from consistency_vae.sweep.grid_queue import GridQueue
from consistency_vae.sweep.resume import finished_unrecorded, resume_args
from consistency_vae.sweep.store import SweepStore, read_json, run_key
from consistency_vae.sweep.sweep_file import (
    build_command,
    grid_points,
    load_sweep,
    metric_history,
    propose,
    select,
)

TAIL_LINES = 15  # log lines shown for a failed run


def _child_env(sweep_name: str, threads: int, run_info: Path) -> dict:
    """A run's environment: the runner's, with W&B's offline defaults and ``threads`` CPU threads
    (``cpu_threads.resolve``: the user's --threads or OMP_NUM_THREADS, which is never overridden
    by a split of the cores: on a shared machine, threads of parallel runs wait on each other)."""
    from consistency_vae.tracking import RUN_INFO_ENV  # Lightning: not for `sweep --help`

    env = dict(os.environ)
    env.pop("WANDB_SERVICE", None)  # as wandb agent does: each run starts its own wandb service
    env.setdefault("WANDB_MODE", "offline")  # the user's choice wins (online, disabled)
    env.setdefault("WANDB_RUN_GROUP", sweep_name)  # W&B groups the runs once synced
    for name in (cpu_threads.ENV, "MKL_NUM_THREADS"):  # what the run's `fit` resolves (threads.py)
        env[name] = str(threads)
    env[RUN_INFO_ENV] = str(run_info)
    return env


def _tail(path: Path, n: int = TAIL_LINES) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return "\n".join("    " + line for line in lines[-n:])


def _finish(run: dict, proc: subprocess.Popen, folder: Path, metric: str | None) -> None:
    """Fill a run's record once its process has ended."""
    run["exit_code"] = proc.returncode
    run["status"] = "finished" if proc.returncode == 0 else "failed"
    run["ended"] = time.time()
    run["seconds"] = round(run["ended"] - run["started"], 1)
    run.update(read_json(folder / "logs" / f"{run['id']}.json") or {})  # the run folders it wrote
    if run.get("pack"):  # a pack's exit code is its members' together: each has its own outcome
        ok = "failed" in run and not run["failed"] and run.get("run_dir") is not None
        run["status"] = "finished" if ok and read_status(Path(run["run_dir"])).get("status") == "finished" \
            else "failed"
    if metric and run.get("run_dir"):
        run["history"] = metric_history(Path(run["run_dir"]) / "metrics.csv", metric)


def _report(run: dict, index: str, metric: str | None) -> None:
    params = " ".join(f"{k}={v}" for k, v in run["params"].items())
    if run["status"] == "finished":
        value = run["history"][-1][metric] if metric and run.get("history") else None
        shown = f"{metric} {value:.4g}, " if value is not None else ""
        print(f"{index} finished in {run['seconds']:.0f} s: {params} ({shown}run folder "
              f"{run.get('run_dir')})", flush=True)
    else:
        print(f"{index} FAILED with exit code {run['exit_code']} after {run['seconds']:.0f} s: "
              f"{params}\n  last lines of {run['log']}:\n{_tail(Path(run['log']))}", flush=True)


def _launch(command: list[str], log: Path | str, env: dict, members: list[tuple[dict, Path | None]],
            store: SweepStore, running: dict, record: dict | None = None) -> None:
    """Start ``command``, one run's or a pack's (the runs of ``members``), into ``running`` at once (so
    that every exit path stops it), and name its process in each run's claim and record (updated
    with ``record``): neither is stale while it runs."""
    with open(log, "w") as out:
        proc = children.start(command, out, env)
    child = claims.process_info(proc.pid)
    for run, claim in members:
        running[run["id"]] = (run, proc, claim)
        if claim:
            claims.add_child(claim, proc.pid)
        run.update(record or {}, runner={**run["runner"], "child": child})
        store.save(run)


def _start_pack(to_start: list[tuple[dict, Path | None]], env: dict, store: SweepStore,
                running: dict) -> None:
    """One process for the runs of a pack (sweep/packs.py), each run with its own record and claim
    naming that process; the pack's log is each member's log."""
    first = to_start[0][0]
    spec = packs.write_spec(store.folder / "logs" / f"pack-{first['id']}.json", [r for r, _ in to_start])
    log = store.folder / "logs" / f"pack-{first['id']}.log"
    _launch(packs.pack_command(spec), log, env, to_start, store, running,
            record={"pack": first["id"], "log": str(log)})


def _why(err: BaseException) -> str:
    if isinstance(err, children.Stopped | KeyboardInterrupt):
        return str(err) or "stopped by Ctrl-C"
    return f"stopped by an error ({type(err).__name__}: {err})"


def _stop_runs(running: dict, store: SweepStore, metric: str | None, why: str) -> None:
    """Stop every run (SIGTERM, then SIGKILL after children.STOP_GRACE_S), record how each ended
    (``interrupted``: the next runner resumes it from its last.ckpt), and give its claim back."""
    if not running:
        print(why, flush=True)
        return
    print(f"{why}: stopping its {len(running)} runs (up to {children.STOP_GRACE_S:.0f} s for them to "
          "save a checkpoint)", flush=True)
    with children.uninterrupted():
        children.stop(list({id(p): p for _, p, _ in running.values()}.values()))  # a pack: one process
        for run, proc, claim in running.values():
            if proc.returncode == 0:  # it ended by itself just now
                _finish(run, proc, store.folder, metric)
            else:
                run.update(status="interrupted", exit_code=proc.returncode, ended=time.time(),
                           seconds=round(time.time() - run["started"], 1))
            store.save(run)
            if claim:
                claims.release(claim)
    ended = ", ".join(f"{r['id']} {r['status']}" for r, _, _ in running.values())
    print(f"{why}: runs recorded ({ended}); the same command resumes the interrupted ones from their "
          "last.ckpt", flush=True)


def _count_as_finished(run: dict, latest: dict, why: str, store: SweepStore, claim: Path | None) -> None:
    """Record ``run`` as finished by the earlier attempt ``latest`` (see finished_unrecorded)."""
    run.update(status="finished", exit_code=0, ended=time.time(), seconds=0.0, command=[],
               run_dir=latest["run_dir"], completes=latest["id"])
    store.save(run)
    if claim:
        claims.release(claim)
    print(f"[run {run['id']}] run {latest['id']} {why}: counted as finished, run folder "
          f"{latest['run_dir']}", flush=True)


def run_sweep(sweep_file: str, parallel: int = 1, count: int | None = None, runs_dir: str = "runs",
              extra_args: list[str] | None = None, index: int | None = None,
              only: dict[str, list] | None = None, threads: int | None = None, pack: int | str = 1,
              skip: set[str] = frozenset()) -> dict:
    """Propose, claim, launch and collect runs until ``count`` have run or the grid is done.

    ``index``: only grid point ``index`` (a SLURM array task); ``only``: the grid points whose
    parameters take the given values (``{"seed_everything": [0]}``); ``threads``: CPU threads of
    each run (None: OMP_NUM_THREADS if set, else 1; threads.py); ``pack``: grid points per process
    (sweep/packs.py; ``parallel`` then counts processes), or ``auto``; ``skip``: the run keys
    (store.run_key) of grid points not to run (those a reproduction kept from an earlier one).
    """
    from wandb.env import get_agent_max_initial_failures
    from wandb.wandb_agent import Agent

    if parallel < 1 or (count is not None and count < 1):
        raise ConfigError(f"--parallel and --count must be >= 1, got {parallel} and {count}")
    config = load_sweep(sweep_file)
    name = config.get("name") or Path(sweep_file).stem
    store = SweepStore(Path(runs_dir) / f"sweep-{name}", sweep_file, config)
    user_extra = list(extra_args or [])
    queue = None
    if config["method"] == "grid":
        points = [(i, p) for i, p in select(grid_points(config), only) if run_key(p, user_extra) not in skip]
        if index is not None:
            points = [(i, p) for i, p in points if i == index]
            if not points:
                raise ConfigError(f"--index {index}: {sweep_file} has no such grid point; `consistency-vae "
                                  f"sweep {sweep_file} --list` shows them, numbered from 0")
        queue = GridQueue(store, points, user_extra)
    elif index is not None or only:
        raise ConfigError(f"--index and --only pick grid points; {sweep_file} is a {config['method']} search")
    if "run_cap" in config:  # W&B's cap on the sweep's runs, earlier invocations included
        left = config["run_cap"] - len(store.records())
        if left <= 0:
            print(f"sweep {name}: its run_cap of {config['run_cap']} runs is reached ({store.manifest})")
            return {"manifest": str(store.manifest), "finished": 0, "failed": 0}
        count = min(count or left, left)
    if queue is None and count is None:
        raise ConfigError(f"a {config['method']} search never ends by itself: give --count N")
    metric = (config.get("metric") or {}).get("name")
    threads, threads_from = cpu_threads.resolve(threads)  # per run; a ConfigError before any run
    pack = packs.resolve(pack)
    if pack > 1 and queue is None:
        raise ConfigError(f"--pack {pack}: packs are for grid sweeps; {sweep_file} is a {config['method']} "
                          "search, whose next point depends on the last results: use --pack 1")
    # as `wandb agent` stops a broken command (WANDB_AGENT_MAX_INITIAL_FAILURES, default 5)
    max_initial_failures = get_agent_max_initial_failures(Agent.MAX_INITIAL_FAILURES)
    extra = [f"--trainer.default_root_dir={runs_dir}", *user_extra]
    running: dict[str, tuple[dict, subprocess.Popen, Path | None]] = {}
    launched, exhausted, outcomes, beat = 0, False, [], time.time()
    at_once = f"{parallel} packs of up to {pack} runs" if pack > 1 else str(parallel)
    print(f"sweep {name} ({config['method']}): up to {count or 'all grid'} runs, {at_once} at a time, "
          f"{threads} thread(s) each ({threads_from}); records in {store.folder}", flush=True)
    restore_signals = children.stop_on_signals()  # SIGTERM, SIGHUP: Stopped, as Ctrl-C is KeyboardInterrupt
    try:
        while running or (not exhausted and (count is None or launched < count)):
            while (len({id(p) for _, p, _ in running.values()}) < parallel and not exhausted
                   and (count is None or launched < count)
                   and not (len(outcomes) >= max_initial_failures and not any(outcomes))):
                if queue is not None:
                    picked = queue.next()
                    if picked is None:
                        exhausted = True
                        break
                    size = pack if count is None else min(pack, count - launched)
                    picks = queue.next_in_pack(picked, size) if size > 1 else [picked]
                else:
                    params = propose(config, store.records())
                    if params is None:
                        exhausted = True
                        break
                    picks = [(None, params, run_key(params, user_extra), None, None)]
                to_start, lines = [], []
                for _, params, key, claim, latest in picks:
                    run = store.new_record(params, key, user_extra)
                    command = build_command(config, params) + extra
                    launched += 1
                    if done := finished_unrecorded(latest, command):
                        _count_as_finished(run, latest, done, store, claim)
                        outcomes.append(True)
                        continue
                    resume = resume_args(latest)
                    run["command"] = command + resume
                    if resume:
                        run["resumes"] = latest["id"]
                    store.save(run)
                    to_start.append((run, claim))
                    lines.append((f"[{launched}{'/' + str(count) if count else ''}] started run {run['id']}"
                                  f"{' (resuming run ' + latest['id'] + ')' if resume else ''}",
                                  " ".join(f"{k}={v}" for k, v in params.items())))
                # A pack, even of one (a grid's last point, --index I); but a run that resumes alone
                # resumes in a solo fit, which also takes a solo run's checkpoint written mid-epoch.
                alone = pack == 1 or (len(to_start) == 1 and "resumes" in to_start[0][0])
                for started, values in lines:
                    print(f"{started}{' in pack ' + to_start[0][0]['id'] if not alone else ''}: {values}",
                          flush=True)
                if alone and to_start:
                    run = to_start[0][0]
                    env = _child_env(name, threads, Path(run["log"]).with_suffix(".json"))
                    _launch(run["command"], run["log"], env, to_start, store, running)
                elif to_start:
                    # the pack's process points each member's fit at its own run-info (packed/run.py)
                    _start_pack(to_start, _child_env(name, threads, store.folder / "logs" / "pack.json"),
                                store, running)
            if len(outcomes) >= max_initial_failures and not any(outcomes) and not running:
                print(f"sweep {name}: the first {len(outcomes)} runs all failed, stopping (as wandb "
                      "agent does): fix the command shown in their logs", flush=True)
                break
            time.sleep(0.5)
            if time.time() - beat > claims.HEARTBEAT_S:  # tell other hosts these runs are alive
                beat = time.time()
                for run, _, claim in running.values():
                    store.heartbeat(run)
                    if claim:
                        claims.heartbeat(claim)
            for run_id, (run, proc, claim) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[run_id]
                _finish(run, proc, store.folder, metric)
                store.save(run)  # the outcome first, then the claim: no one retrains a finished run
                if claim:
                    claims.release(claim)
                outcomes.append(run["status"] == "finished")
                _report(run, f"[run {run_id}]", metric)
    except BaseException as err:  # Ctrl-C, SIGTERM, SIGHUP, an error: no run outlives its runner
        _stop_runs(running, store, metric, f"sweep {name}: {_why(err)}")
        if isinstance(err, children.Stopped):
            raise SystemExit(128 + err.signum) from None  # the shell's code for "killed by SIGNAL"
        raise
    finally:
        restore_signals()
    finished = sum(outcomes)
    skipped = {k: v for k, v in (queue.skipped if queue else {}).items() if v}
    print(f"sweep {name}: {finished} of {len(outcomes)} runs finished"
          f"{f', {len(outcomes) - finished} failed' if finished < len(outcomes) else ''}"
          f"{'; grid points skipped: ' + str(skipped) if skipped else ''}; manifest {store.manifest}",
          flush=True)
    if line := best_run.closing_line(name, store.records(), config):  # by the sweep file's metric
        print(line, flush=True)
    return {"manifest": str(store.manifest), "finished": finished, "failed": len(outcomes) - finished,
            "skipped": skipped}
