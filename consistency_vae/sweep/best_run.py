"""The line a sweep ends with: its best run by the sweep file's metric, and why.

The candidates are the sweep's finished runs, this invocation's and earlier ones' (its records),
each run folder once. A run's value is the metric's last logged value, as W&B keeps it in the run's
summary and ranks runs by it. When the metric is ``val/constrained_elbo`` (the alpha rule,
consistency_vae/alpha_choice.py), the pick is ``alpha_choice.best`` on each run's last validation
ELBO and KL(z'||z), under the budget its ConstrainedELBO callback logged the metric with (from the
run's config.yaml): the same numbers, and the line says how the pick met the budget.
"""

import math
from pathlib import Path

import yaml

from consistency_vae import alpha_choice
from consistency_vae.sweep.sweep_file import metric_history

VALIDATION = ("val/elbo", "val/kl_consistency")  # what val/constrained_elbo is made of


def _last(run_dir: Path, key: str) -> float:
    """The last value of ``key`` in the run's metrics.csv; NaN where the run never logged it."""
    history = metric_history(run_dir / "metrics.csv", key)
    return history[-1][key] if history else math.nan


def rule_args(run_dir: Path) -> tuple[float, float]:
    """(kl_target, penalty) of the run's ConstrainedELBO callback, as its config.yaml records them;
    the defaults where the run has no such callback (it logged no val/constrained_elbo then)."""
    path = run_dir / "config.yaml"
    config = (yaml.safe_load(path.read_text()) if path.is_file() else None) or {}
    for callback in (config.get("trainer") or {}).get("callbacks") or []:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).endswith(".ConstrainedELBO"):
            args = callback.get("init_args") or {}
            return (float(args.get("kl_target", alpha_choice.KL_BUDGET)),
                    float(args.get("penalty", alpha_choice.PENALTY)))
    return alpha_choice.KL_BUDGET, alpha_choice.PENALTY


def finished_runs(records: list[dict], metric: str) -> list[dict]:
    """One row per finished run folder: its record and the last value of ``metric`` (and, for the
    alpha rule's metric, of its parts)."""
    rows, seen = [], set()
    for record in records:
        if record.get("status") != "finished" or not record.get("run_dir") or record["run_dir"] in seen:
            continue
        seen.add(record["run_dir"])
        run_dir = Path(record["run_dir"])
        keys = (metric, *VALIDATION) if metric == alpha_choice.METRIC else (metric,)
        rows.append({"record": record, **{key: _last(run_dir, key) for key in keys}})
    return rows


def pick(records: list[dict], metric: str, goal: str) -> tuple[dict | None, str, int]:
    """(the best run's row, why it is, how many finished runs were candidates)."""
    rows = finished_runs(records, metric)
    if metric == alpha_choice.METRIC and goal == "maximize":
        rules = {rule_args(Path(r["record"]["run_dir"])) for r in rows}
        if len(rules) == 1:  # one budget for all (else: rank by the logged numbers alone)
            ((budget, penalty),) = rules
            choice = alpha_choice.best(rows, budget, *VALIDATION, penalty=penalty)
            return (choice.row, choice.why("runs"), len(rows)) if choice else (None, "", len(rows))
    row = alpha_choice.first(rows, lambda r: r[metric], goal)
    return row, f"the {'highest' if goal == 'maximize' else 'lowest'} {metric} ({goal})", len(rows)


def closing_line(name: str, records: list[dict], sweep_config: dict) -> str | None:
    """``sweep NAME: best run ...``, or None for a sweep file without a metric."""
    metric = (sweep_config.get("metric") or {}).get("name")
    if not metric:
        return None
    row, why, n = pick(records, metric, sweep_config["metric"].get("goal", "minimize"))  # W&B's default
    if row is None:
        return f"sweep {name}: none of its {n} finished runs logged {metric}, so there is no best run to name"
    record = row["record"]
    params = " ".join(f"{k}={v}" for k, v in record["params"].items())
    return (f"sweep {name}: best run {record['id']} of {n} finished ({params}), {metric} "
            f"{row[metric]:.4g}: {why}; run folder {record['run_dir']}")
