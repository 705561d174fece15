"""``consistency-vae sweep``: run a W&B sweep file on this machine, with W&B's own engine.

    consistency-vae sweep sweeps/alpha_mnist.yaml [--parallel N] [--count N] [--runs_dir DIR]
                          [--extra-args --trainer.max_epochs=5 ...]

The same file drives ``wandb sweep`` + ``wandb agent`` online. Offline, the parts that matter are
W&B's own code, not a re-implementation:
- the next run is proposed by ``sweeps.next_run`` (the engine behind W&B's sweep server: grid,
  random, bayes); a bayes search is fed the finished runs with their metric history;
- each run's command line is built by ``create_sweep_command`` / ``create_sweep_command_args``
  from ``wandb.sdk.launch.sweeps.utils`` and expanded macro by macro as ``wandb agent`` does, except
  that ``${interpreter}`` is this Python (the agent's bare ``python`` may not be the venv's).

Every run is a subprocess logging to W&B offline (unless WANDB_MODE is set), in the group named
after the sweep, so ``wandb sync DIR/wandb/offline-run-*`` uploads them together. A failed run is
reported with its exit code and last log lines, and the sweep goes on. ``DIR/sweep-NAME/`` holds
``manifest.json`` (each run's params, command, status, run folder) and one log per run; running the
same command again continues the sweep: finished runs are kept, failed grid points are retried.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import yaml

from consistency_vae.commands import DefaultsHelpFormatter
from consistency_vae.errors import ConfigError, UserError
from consistency_vae.tracking import RUN_INFO_ENV

TAIL_LINES = 15  # log lines shown for a failed run


# --- the sweep file and wandb's command building (pure) ---------------------------------------
def load_sweep(path: str | Path) -> dict:
    """Read a sweep YAML and check it against the sweeps package's schema."""
    with warnings.catch_warnings():  # sweeps' pydantic models use a v1 config key; harmless
        warnings.filterwarnings("ignore", message="Valid config keys have changed in V2")
        from sweeps import schema_violations_from_proposed_config

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist: give a file from sweeps/, "
                          "e.g. sweeps/alpha_mnist.yaml")
    config = yaml.safe_load(path.read_text())
    violations = schema_violations_from_proposed_config(config)
    if violations:
        raise ConfigError(f"sweep file {path} breaks the W&B sweep schema: {'; '.join(violations)}")
    return config


def build_command(sweep_config: dict, params: dict, interpreter: str = sys.executable) -> list[str]:
    """The argv ``wandb agent`` runs for one proposed run, with ``${interpreter}`` = ``interpreter``.

    ``params`` maps each parameter (``model.alpha``) to its value, as in a proposed run's config.
    The loop below is ``wandb_agent.Agent._command_run``'s, which has no public function.
    """
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    template = create_sweep_command(list(sweep_config.get("command") or []))  # copies: it edits in place
    sweep_vars = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    sweep_vars["interpreter"] = [interpreter]
    sweep_vars["program"] = [sweep_config["program"]] if "program" in sweep_config else []
    if platform.system() != "Windows":
        sweep_vars["env"] = ["/usr/bin/env"]
    argv: list[str] = []
    for chunk in map(str, template):
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += sweep_vars.get(chunk[2:-1]) or []
        else:
            argv.append(chunk)
    return argv


def check_against_cli(sweep_file: str | Path, sweep_config: dict, extra: list[str]) -> None:
    """Parse the first proposed run's command with this project's CLI (``--print_config``, which
    builds nothing) before any run starts: a misspelt parameter (``model.alpah``) fails here, in one
    line, not in every run's log. Commands that do not run ``python -m consistency_vae`` are left
    alone. The test suite does the same for the shipped files (tests/test_sweeps.py)."""
    import contextlib
    import io

    argv = build_command(sweep_config, propose(sweep_config, []))
    if sweep_config.get("program") != "consistency_vae" or "consistency_vae" not in argv:
        return
    from consistency_vae.cli import lightning_cli

    args = [*argv[argv.index("consistency_vae") + 1:], *extra, "--print_config"]
    err, code = io.StringIO(), None
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            lightning_cli(args)
        except SystemExit as exit_:
            code = exit_.code
    if code in (0, None):
        return
    said = [line for line in err.getvalue().splitlines() if line.startswith(("did you mean", "error:"))]
    raise ConfigError(f"sweep file {sweep_file}: the CLI refuses its runs' command, nothing was run: "
                      f"{' '.join(said) or code}. Each parameter must be a key of "
                      "`consistency-vae fit --help` (e.g. model.alpha)")


def _plain(value):
    """numpy scalars (bayes proposals) -> Python numbers, for JSON and for the command line."""
    return value.item() if hasattr(value, "item") else value


def propose(sweep_config: dict, runs: list[dict]) -> dict | None:
    """The next run's parameters from W&B's engine, or None when a grid is exhausted.

    ``runs`` are manifest entries: finished ones with their metric history, running ones (so a grid
    never proposes a point twice), failed ones (a grid skips them, bayes scores them as the worst).
    """
    from sweeps import RunState, SweepRun, next_run

    known = []
    for run in runs:
        state = {"finished": RunState.finished, "running": RunState.running,
                 "killed": RunState.killed}.get(run["status"], RunState.failed)
        metric = run.get("history") or []
        known.append(SweepRun(name=run["id"], state=state, history=metric,
                              config={k: {"value": v} for k, v in run["params"].items()}))
    proposal = next_run(sweep_config, known, validate=True)
    if proposal is None:
        return None
    return {k: _plain(v["value"]) for k, v in proposal.config.items()}


def metric_history(metrics_csv: Path, metric: str) -> list[dict]:
    """Rows of a run's metrics.csv that hold ``metric``, as W&B history dicts ``{metric: value}``."""
    import csv

    if not metrics_csv.is_file():
        return []
    with metrics_csv.open() as f:
        return [{metric: float(row[metric])} for row in csv.DictReader(f) if row.get(metric)]


# --- running ------------------------------------------------------------------------------
class Manifest:
    """``DIR/sweep-NAME/manifest.json``: the sweep file and one entry per run, rewritten atomically."""

    def __init__(self, folder: Path, sweep_file: str, sweep_config: dict):
        self.folder = folder
        self.path = folder / "manifest.json"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "logs").mkdir(exist_ok=True)
        old = json.loads(self.path.read_text()) if self.path.is_file() else {}
        # runs cut off by a crash of this runner are neither finished nor retryable as such
        self.runs = [r if r["status"] != "running" else {**r, "status": "killed"}
                     for r in old.get("runs", [])]
        self.earlier = len(self.runs)  # runs of earlier invocations
        self.sweep_file, self.sweep_config = sweep_file, sweep_config

    def known_runs(self) -> list[dict]:
        """What the engine is told: a grid point that failed in an earlier invocation is tried
        again (the user may have fixed the cause); within one invocation, as in a W&B sweep, not."""
        if self.sweep_config["method"] != "grid":
            return self.runs
        return [r for r in self.runs[:self.earlier] if r["status"] == "finished"] + self.runs[self.earlier:]

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"sweep_file": self.sweep_file, "sweep": self.sweep_config,
                                   "runs": self.runs}, indent=1))
        tmp.replace(self.path)


def _child_env(sweep_name: str, threads: int, run_info: Path) -> dict:
    env = dict(os.environ)
    env.pop("WANDB_SERVICE", None)  # as wandb agent does: each run starts its own wandb service
    env.setdefault("WANDB_MODE", "offline")  # the user's choice wins (online, disabled)
    env.setdefault("WANDB_RUN_GROUP", sweep_name)  # W&B groups the runs once synced
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # parallel runs share the cores
        env[name] = str(threads)
    env[RUN_INFO_ENV] = str(run_info)
    return env


def _tail(path: Path, n: int = TAIL_LINES) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return "\n".join("    " + line for line in lines[-n:])


def _finish(run: dict, proc: subprocess.Popen, folder: Path, metric: str | None) -> None:
    """Fill a run's entry once its process has ended."""
    run["exit_code"] = proc.returncode
    run["status"] = "finished" if proc.returncode == 0 else "failed"
    run["seconds"] = round(time.time() - run["started"], 1)
    info_path = folder / "logs" / f"{run['id']}.json"
    if info_path.is_file():
        run.update(json.loads(info_path.read_text()))
    if metric and run.get("run_dir"):
        run["history"] = metric_history(Path(run["run_dir"]) / "metrics.csv", metric)


def _report(run: dict, index: str, metric: str | None, folder: Path) -> None:
    params = " ".join(f"{k}={v}" for k, v in run["params"].items())
    if run["status"] == "finished":
        value = run["history"][-1][metric] if metric and run.get("history") else None
        shown = f"{metric} {value:.4g}, " if value is not None else ""
        print(f"{index} finished in {run['seconds']:.0f} s: {params} ({shown}run folder "
              f"{run.get('run_dir')})", flush=True)
    else:
        print(f"{index} FAILED with exit code {run['exit_code']} after {run['seconds']:.0f} s: "
              f"{params}\n  last lines of {run['log']}:\n{_tail(Path(run['log']))}", flush=True)


def run_sweep(sweep_file: str, parallel: int = 1, count: int | None = None, runs_dir: str = "runs",
              extra_args: list[str] | None = None) -> dict:
    """Propose, launch and collect runs until ``count`` have run or the grid is done."""
    from wandb.env import get_agent_max_initial_failures
    from wandb.wandb_agent import Agent

    if parallel < 1 or (count is not None and count < 1):
        raise ConfigError(f"--parallel and --count must be >= 1, got {parallel} and {count}")
    config = load_sweep(sweep_file)
    name = config.get("name") or Path(sweep_file).stem
    manifest = Manifest(Path(runs_dir) / f"sweep-{name}", sweep_file, config)
    if "run_cap" in config:  # W&B's cap on the sweep's runs, earlier invocations included
        left = config["run_cap"] - len(manifest.runs)
        if left <= 0:
            print(f"sweep {name}: its run_cap of {config['run_cap']} runs is reached ({manifest.path})")
            return {"manifest": str(manifest.path), "finished": 0, "failed": 0}
        count = min(count or left, left)
    if config["method"] != "grid" and count is None:
        raise ConfigError(f"a {config['method']} search never ends by itself: give --count N")
    metric = (config.get("metric") or {}).get("name")
    threads = max(1, (os.cpu_count() or 1) // parallel)
    # as `wandb agent` stops a broken command (WANDB_AGENT_MAX_INITIAL_FAILURES, default 5)
    max_initial_failures = get_agent_max_initial_failures(Agent.MAX_INITIAL_FAILURES)
    extra = [f"--trainer.default_root_dir={runs_dir}", *(extra_args or [])]
    running: dict[str, tuple[dict, subprocess.Popen]] = {}
    launched, exhausted, outcomes = 0, False, []
    print(f"sweep {name} ({config['method']}): up to {count or 'all grid'} runs, {parallel} at a time, "
          f"{threads} thread(s) each; manifest {manifest.path}", flush=True)
    try:
        while running or (not exhausted and (count is None or launched < count)):
            while (len(running) < parallel and not exhausted and (count is None or launched < count)
                   and not (len(outcomes) >= max_initial_failures and not any(outcomes))):
                params = propose(config, manifest.known_runs())
                if params is None:
                    exhausted = True
                    break
                run_id = f"{len(manifest.runs) + 1:04d}"
                log = manifest.folder / "logs" / f"{run_id}.log"
                run = {"id": run_id, "params": params, "status": "running", "log": str(log),
                       "command": build_command(config, params) + extra, "started": time.time()}
                manifest.runs.append(run)
                launched += 1
                with log.open("w") as out:
                    proc = subprocess.Popen(run["command"], stdout=out, stderr=subprocess.STDOUT,
                                            env=_child_env(name, threads, log.with_suffix(".json")))
                running[run_id] = (run, proc)
                print(f"[{launched}{'/' + str(count) if count else ''}] started run {run_id}: "
                      + " ".join(f"{k}={v}" for k, v in params.items()), flush=True)
                manifest.save()
            if len(outcomes) >= max_initial_failures and not any(outcomes) and not running:
                print(f"sweep {name}: the first {len(outcomes)} runs all failed, stopping (as wandb "
                      "agent does): fix the command shown in their logs", flush=True)
                break
            time.sleep(0.5)
            for run_id, (run, proc) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[run_id]
                _finish(run, proc, manifest.folder, metric)
                outcomes.append(run["status"] == "finished")
                _report(run, f"[run {run_id}]", metric, manifest.folder)
                manifest.save()
    except KeyboardInterrupt:
        for run, proc in running.values():
            proc.terminate()
            proc.wait()
            run.update(status="killed", exit_code=proc.returncode,
                       seconds=round(time.time() - run["started"], 1))
        manifest.save()
        raise
    finished = sum(outcomes)
    print(f"sweep {name}: {finished} of {len(outcomes)} runs finished"
          f"{f', {len(outcomes) - finished} failed' if finished < len(outcomes) else ''}; "
          f"manifest {manifest.path}", flush=True)
    return {"manifest": str(manifest.path), "finished": finished, "failed": len(outcomes) - finished}


def main(argv: list[str]) -> None:
    """consistency-vae sweep: run a W&B sweep file on this machine, offline, with W&B's engine."""
    parser = argparse.ArgumentParser(prog="consistency-vae sweep", description=main.__doc__,
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("sweep_file", help="a W&B sweep YAML, e.g. sweeps/alpha_mnist.yaml")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (cores are split)")
    parser.add_argument("--count", type=int, default=None,
                        help="runs to launch (default: the whole grid, or the file's run_cap; "
                             "random/bayes need one of the two)")
    parser.add_argument("--runs_dir", default="runs", help="where run folders and wandb/ go")
    parser.add_argument("--extra-args", nargs=argparse.REMAINDER, default=[],
                        help="the rest of the line is added to every run's command, "
                             "e.g. --extra-args --trainer.max_epochs=2")
    args = parser.parse_args(argv)
    try:
        check_against_cli(args.sweep_file, load_sweep(args.sweep_file),
                          [f"--trainer.default_root_dir={args.runs_dir}", *args.extra_args])
        result = run_sweep(args.sweep_file, args.parallel, args.count, args.runs_dir, args.extra_args)
    except UserError as err:
        sys.exit(f"consistency-vae sweep: error: {err}")
    if result["failed"]:
        sys.exit(1)  # after every run has had its go: scripts and CI see that something failed
