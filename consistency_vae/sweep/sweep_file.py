"""``consistency-vae sweep``: run a W&B sweep file on this machine, with W&B's own engine.

    consistency-vae sweep sweeps/alpha_mnist.yaml [--parallel N] [--count N] [--runs_dir DIR]
                          [--index I | --only NAME=V1,V2 | --list]
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
same command again continues the sweep: finished runs are kept, failed grid points are retried,
cut-off ones resume. Runners started twice, or on many machines sharing DIR (``--index I`` runs
grid point I: a SLURM array), claim each grid point before training it (runner.py, claims.py).
The command itself is command.py.
"""

import platform
import sys
import warnings
from pathlib import Path

from consistency_vae.errors import ConfigError, UserError
from consistency_vae.user_files import read_yaml


def engine():
    """W&B's sweep engine, the ``sweeps`` package: an optional extra (it pins numpy<2), so a
    missing one is a one-line error with the install command, not an ImportError."""
    with warnings.catch_warnings():  # sweeps' pydantic models use a v1 config key; harmless
        warnings.filterwarnings("ignore", message="Valid config keys have changed in V2")
        try:
            import sweeps
        except ImportError:
            raise UserError("offline sweeps (consistency-vae sweep, reproduce) need W&B's sweep engine, "
                            "which is not installed: pip install 'consistency-vae[sweeps]' (make installs "
                            "it; note that it pins numpy<2)") from None
    return sweeps


# --- the sweep file and wandb's command building (pure) ---------------------------------------
def load_sweep(path: str | Path) -> dict:
    """Read a sweep YAML and check it against the sweeps package's schema."""
    schema_violations_from_proposed_config = engine().schema_violations_from_proposed_config
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist: give a file from sweeps/, "
                          "e.g. sweeps/alpha_mnist.yaml")
    config = read_yaml(path, "fix the file, or give one from sweeps/, e.g. sweeps/alpha_mnist.yaml")
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
    from consistency_vae.training_cli import lightning_cli  # here: `sweep --list` needs no Lightning

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
    fix = ("Each parameter must be a key of `consistency-vae fit --help` (e.g. model.alpha)"
           if "File does not exist" not in err.getvalue() else
           f"Its paths are relative to where the runs start, here {Path.cwd()}: run it from the "
           "project's root, where configs/ is")
    raise ConfigError(f"sweep file {sweep_file}: the CLI refuses its runs' command, nothing was run: "
                      f"{' '.join(said) or code}. {fix}")


def _plain(value):
    """numpy scalars (bayes proposals) -> Python numbers, for JSON and for the command line."""
    return value.item() if hasattr(value, "item") else value


def propose(sweep_config: dict, runs: list[dict]) -> dict | None:
    """The next run's parameters from W&B's engine, or None when a grid is exhausted.

    ``runs`` are manifest entries: finished ones with their metric history, running ones (so a grid
    never proposes a point twice), failed ones (a grid skips them, bayes scores them as the worst).
    """
    sweeps = engine()
    RunState, SweepRun = sweeps.RunState, sweeps.SweepRun

    known = []
    for run in runs:
        state = {"finished": RunState.finished, "running": RunState.running, "killed": RunState.killed,
                 "interrupted": RunState.killed}.get(run["status"], RunState.failed)  # stopped, not failed
        metric = run.get("history") or []
        known.append(SweepRun(name=run["id"], state=state, history=metric,
                              config={k: {"value": v} for k, v in run["params"].items()}))
    proposal = sweeps.next_run(sweep_config, known, validate=True)
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


def grid_points(sweep_config: dict) -> list[dict]:
    """Every point of a grid sweep, in the order W&B's engine proposes them: ``--index I`` is
    the I-th. (``next_runs`` with no runs yet, asked for more than the grid holds.)"""
    if sweep_config["method"] != "grid":
        raise ConfigError(f"only a grid sweep has numbered points, not a {sweep_config['method']} search")
    proposals = engine().next_runs(sweep_config, [], validate=True, n=10**6)
    return [{k: _plain(v["value"]) for k, v in p.config.items()} for p in proposals if p is not None]


def select(points: list[dict], only: dict[str, list] | None) -> list[tuple[int, dict]]:
    """(index, params) of the grid points whose values are among ``only[name]`` for each name."""
    for name in only or {}:
        if points and name not in points[0]:
            raise ConfigError(f"--only {name}: not a parameter of this sweep; its parameters are "
                              f"{sorted(points[0])}")
    return [(i, p) for i, p in enumerate(points)
            if all(p[name] in values for name, values in (only or {}).items())]


def absent_values(points: list[dict], name: str, values: list) -> tuple[list, list]:
    """(the ``values`` that no grid point has for ``name``, the values they have, in grid order)."""
    have = list(dict.fromkeys(p[name] for p in points if name in p))
    return [v for v in values if v not in have], have


def check_only_values(points: list[dict], only: dict[str, list], sweep_file: str) -> None:
    """``--only`` values that no grid point has (a typo, or another sweep's value) stop the command,
    naming the values the grid has: they would train nothing, or only the other values' runs."""
    select(points, only)  # a name that is not a parameter: its own error
    for name, values in only.items():
        missing, have = absent_values(points, name, values)
        if missing:
            raise ConfigError(f"--only {name}={','.join(map(str, missing))}: no grid point of {sweep_file} "
                              f"has it; its {name} values are {','.join(map(str, have))}")
