"""The reproduction's numbers: results/summary.json and results/summary.md, with an honest verdict.

Every number comes from the runs' own files: each run's ``eval/metrics.json`` (written by
``evaluate``) and its metrics record (the per-epoch curves and the epoch times; see run_record).
Which runs: the reproduction's sweep records, or run folders gathered from other machines
(runs.py).
"""

import json
import math
import statistics
from pathlib import Path

from consistency_vae import alpha_choice, atomic, run_record
from consistency_vae.errors import UserError
from consistency_vae.reproduction import claims_figures, kept, results_figures, summary_md, verdicts
from consistency_vae.reproduction.common import METRICS, PAPER, TOLERANCE, checkpoint_epoch, group
from consistency_vae.reproduction.runs import Run
from consistency_vae.reproduction.verdicts import stats
from consistency_vae.sweep.report import summarise
from consistency_vae.sweep.sweep_file import grid_points, load_sweep


def epoch_curve(folder: Path, epochs: int, key: str = "test/kl_consistency") -> list[float]:
    """The value of ``key`` logged in each of the ``epochs`` training epochs; NaN where missing.

    Read from the run's one record over all its attempts (``run_record.merged_rows``: a resumed
    run's epochs once each, the resumed attempt's where they overlap). The final test after
    ``fit`` logs the same key in the row that holds test/loss (labelled with the best checkpoint's
    epoch; in older runs, epoch == epochs); it is not on the curve.
    """
    by_epoch: dict[int, float] = {}
    for row in run_record.merged_rows(folder):
        if run_record.is_final_test(row):
            continue
        if key in row and "epoch" in row and (epoch := int(float(row["epoch"]))) < epochs:
            by_epoch.setdefault(epoch, float(row[key]))
    return [by_epoch.get(e, math.nan) for e in range(epochs)] if by_epoch else []


def evaluated_epoch(folder: Path, metrics: dict) -> int | None:
    """The epoch of the checkpoint that ``metrics`` (eval/metrics.json) were computed from: as
    evaluate recorded it, else that checkpoint's file in the run's own folder. The recorded
    ckpt_path is where the file was at evaluation, which a gathered or moved folder no longer is."""
    if metrics.get("ckpt_epoch") is not None:
        return int(metrics["ckpt_epoch"])
    name = Path(metrics.get("ckpt_path", "")).name
    return checkpoint_epoch(folder / "checkpoints" / name) if name else None


def record(run: Run, metrics: dict) -> dict:
    """Every number of ``run`` that the summary uses, with its sweep key: what a later reproduction
    with the same --output keeps when the run's folder is gone (kept.py)."""
    folder, epochs = run.folder, run.epochs
    times = [t for t in epoch_curve(folder, epochs, "time/train_epoch_s") if not math.isnan(t)]
    return {"name": run.name, "folder": str(folder), "key": run.key, "dataset": run.dataset,
            "setting": run.setting, "model": run.model, "alpha_init": run.alpha, "kl_target": run.kl_target,
            "seed": run.seed, "epochs": epochs, "subset": run.subset, "lr_schedule": run.lr_schedule,
            **{m: float(metrics[m]) for m in METRICS if m in metrics},
            # standard errors over images (evaluate's KEY_se), beside the spread over seeds
            **{f"{m}_se": float(metrics[f"{m}_se"]) for m in METRICS if f"{m}_se" in metrics},
            # the median: a shared machine's load spikes hit single epochs
            "train_epoch_s": statistics.median(times) if times else math.nan,
            "evaluated_epoch": evaluated_epoch(folder, metrics),
            "curve": epoch_curve(folder, epochs)}


def paired(records: list[dict], dataset: str, setting: str, fn) -> dict:
    """fn(vae_record, consistency_record) over the seeds both have: a ratio or a difference."""
    vae = {r["seed"]: r for r in group(records, dataset=dataset, setting=setting, model="vae")}
    ours = {r["seed"]: r for r in group(records, dataset=dataset, setting=setting, model="consistency")}
    return stats([fn(vae[s], ours[s]) for s in sorted(vae.keys() & ours.keys())])


def comparison(records: list[dict], dataset: str, setting: str) -> dict:
    # the constrained column: the smallest epsilon of the setting (the others: constrained_rows)
    eps = min((r["kl_target"] for r in group(records, dataset=dataset, setting=setting, model="constrained")),
              default=None)
    where = {"vae": {}, "consistency": {}, "constrained": {"kl_target": eps}}
    out = {model: {m: stats([r[m] for r in group(records, dataset=dataset, setting=setting, model=model,
                                                  **where[model]) if m in r]) for m in METRICS}
           for model in where}
    out["kl_ratio"] = paired(records, dataset, setting,
                             lambda v, o: v["kl_consistency"] / o["kl_consistency"])
    out["elbo_diff"] = paired(records, dataset, setting, lambda v, o: o["elbo"] - v["elbo"])
    out["iwae_diff"] = paired(records, dataset, setting, lambda v, o: o["iwae_ll"] - v["iwae_ll"])
    return out


def constrained_rows(records: list[dict]) -> list[dict]:
    """Issue 7: each constrained setting against the best fixed alpha that meets the same epsilon."""
    rows = []
    for dataset, setting, eps in sorted({(r["dataset"], r["setting"], r["kl_target"]) for r in records
                                         if r["model"] == "constrained"}):
        ours = group(records, dataset=dataset, setting=setting, model="constrained", kl_target=eps)
        fixed = [r for r in records if r["dataset"] == dataset and r["setting"] == setting
                 and r["kl_target"] is None]
        by_alpha: dict[float, list[dict]] = {}
        for r in fixed:
            by_alpha.setdefault(r["alpha_init"], []).append(r)
        meeting = {a: rs for a, rs in by_alpha.items()
                   if stats([r["kl_consistency"] for r in rs])["mean"] <= TOLERANCE * eps}
        best = max(meeting, key=lambda a: stats([r["elbo"] for r in meeting[a]])["mean"], default=None)
        row = {"dataset": dataset, "setting": setting, "kl_target": eps,
               **{f"constrained_{m}": stats([r[m] for r in ours])
                  for m in ("kl_consistency", "elbo", "alpha")},
               "best_fixed_alpha": best}
        if best is not None:
            row.update({f"fixed_{m}": stats([r[m] for r in meeting[best]])
                        for m in ("kl_consistency", "elbo")})
        row["meets_target"] = row["constrained_kl_consistency"]["mean"] <= TOLERANCE * eps
        row["elbo_at_least_best_fixed"] = (None if best is None else
                                           row["constrained_elbo"]["mean"] >= row["fixed_elbo"]["mean"])
        rows.append(row)
    return rows


def recommend(records: list[dict], kl_budget: float = alpha_choice.KL_BUDGET) -> dict:
    """Per dataset and setting ("mnist/paper"): the fixed alpha that the alpha rule picks on the
    test means over seeds (``alpha_choice.best``, the rule the sweeps rank their runs by), with its
    numbers and why. Where no alpha meets the budget, ``alpha`` is None: no recommendation."""
    out = {}
    settings = {(r["dataset"], r["setting"]) for r in records if r["kl_target"] is None}
    for dataset, setting in sorted(settings, key=lambda ds: (ds[0], ds[1] != "paper", len(ds[1]), ds[1])):
        rows = summarise([{**r, "alpha": r["alpha_init"]} for r in records if r["dataset"] == dataset
                          and r["setting"] == setting and r["kl_target"] is None])
        choice = alpha_choice.best(rows, kl_budget)
        if choice is None:
            continue
        vae = next((r["elbo_mean"] for r in rows if r["alpha"] == 0), math.nan)
        out[f"{dataset}/{setting}"] = {
            "alpha": choice.row["alpha"] if choice.within else None, "rule_pick": choice.row["alpha"],
            "kl_consistency": choice.kl_consistency, "elbo": choice.elbo,
            "constrained_elbo": choice.constrained_elbo, "elbo_below_vae": vae - choice.elbo,
            "kl_budget": kl_budget, "meets_budget": choice.meets_budget,
            "within": choice.within, "candidates": choice.candidates, "why": choice.why("alphas")}
    return out


def group_name(dataset: str, setting: str, alpha: float, kl_target: float | None) -> str:
    """A run group: one dataset, setting and fixed alpha or constrained epsilon, all its seeds."""
    what = f"eps{kl_target:g}" if kl_target is not None else f"alpha{alpha:g}"
    return f"{dataset}/{setting}/{what}"


def planned_groups(sweep_files: list) -> dict[str, int] | None:
    """How many seeds the sweep files ask of each run group (the reproduction's design: 10 for
    alpha 0 and 1, the claims' paired tests, 5 elsewhere); None where a grid point does not name
    its dataset, latent size, seed and alpha or epsilon (which group it is would be a guess)."""
    seeds: dict[str, set] = {}
    for sweep_file in sweep_files:
        for p in grid_points(load_sweep(sweep_file)):
            constrained = p.get("model.alpha_mode") == "constrained"
            need = ("data.dataset", "model.latent_dim", "seed_everything",
                    "model.kl_target" if constrained else "model.alpha")
            if any(k not in p for k in need):
                return None
            kl_target = float(p["model.kl_target"]) if constrained else None
            run = Run(Path(), p["data.dataset"], int(p["model.latent_dim"]), int(p["seed_everything"]),
                      float(p.get("model.alpha", 1.0)), kl_target, epochs=0)
            name = group_name(run.dataset, run.setting, run.alpha, run.kl_target)
            seeds.setdefault(name, set()).add(run.seed)
    return {name: len(s) for name, s in seeds.items()}


def seeds_per_group(records: list[dict], planned: dict[str, int] | None = None) -> dict:
    """How many seeds each run group has, the groups with fewer than expected, and (``missing``)
    the groups the files ask that have no run yet: a partial reproduction says so instead of
    averaging less. Expected: what the sweep files ask of the
    group (``planned``, from ``planned_groups``; ``expected`` then lists it for each short group), else,
    as for the run folders or an earlier summary that came without them, the most any group has."""
    counts: dict[str, int] = {}
    for r in records:
        name = group_name(r["dataset"], r["setting"], r["alpha_init"], r["kl_target"])
        counts[name] = counts.get(name, 0) + 1
    most = max(counts.values(), default=0)
    if planned is None:
        return {"most": most, "groups": len(counts), "short": {k: n for k, n in counts.items() if n < most}}
    expected = {k: planned.get(k, most) for k in counts}  # a group the files lack: the old rule
    short = {k: n for k, n in counts.items() if n < expected[k]}
    out = {"most": most, "groups": len(counts), "short": short, "expected": {k: expected[k] for k in short}}
    if missing := sorted(k for k in planned if k not in counts):  # a reproduction in pieces, so far
        out.update(missing=missing, planned=len(planned))
    return out


def run_config(records: list[dict], args) -> dict:
    """What the summary was made from: seeds, epochs, subset and schedule as the runs' records say
    (older runs: constant), and the command's evaluation flags."""

    def one_or_all(values: set):
        return next(iter(values)) if len(values) == 1 else sorted(values, key=str)

    planned = None if args.from_runs else max(  # the sweep files' seeds
        (len(load_sweep(f)["parameters"].get("seed_everything", {}).get("values", [0])) for f in args.sweeps),
        default=None)
    return {"seeds": len({r["seed"] for r in records}), "planned_seeds": planned,
            "planned_groups": None if args.from_runs else planned_groups(args.sweeps),
            "epochs": one_or_all({r["epochs"] for r in records}),
            "subset": one_or_all({r["subset"] for r in records}),
            "lr_schedule": one_or_all({r["lr_schedule"] for r in records}),
            **kept.evaluation(args), "from_runs": args.from_runs,
            "sweeps": None if args.from_runs else args.sweeps}


def write_all(results: dict[Run, dict], output: Path, args,
              kept_records: dict[str, dict] | None = None) -> dict:
    """The summary of the evaluated runs (``results``) and of the runs an earlier reproduction
    recorded in ``output`` that this one kept (``kept_records``, by sweep key; kept.py)."""
    records = kept.merged(kept_records or {}, [record(run, metrics) for run, metrics in results.items()])
    return write_summary(sorted(records, key=order), run_config(records, args), output)


def order(record: dict) -> tuple:
    """Runs.order's order, of records."""
    return (record["dataset"], record["setting"] != "paper", len(record["setting"]), record["setting"],
            record["kl_target"] is not None, record["kl_target"] or 0.0, record["alpha_init"], record["seed"])


def rebuild(summary_json: Path, output: Path) -> dict:
    """summary.json, summary.md and the figures again from the run records of an earlier
    summary.json (its "runs": every number each run's own files gave), without training or
    evaluating: for a change of the statistics or the tables. Its config is kept, with
    ``rebuilt_from``; figures that need the run folders (latent_drift_*.png) are left as they are.
    A summary made before ``planned_groups`` gets them from its sweep files where they are all
    still here (a summary of files since renamed, like the 3-seed reproduce_fixed.yaml's, has none)."""
    try:
        old = json.loads(Path(summary_json).read_text())
        config, runs = {**old["config"], "rebuilt_from": str(summary_json)}, old["runs"]
        if not isinstance(runs, list) or not all(isinstance(r, dict) and "setting" in r for r in runs):
            raise TypeError("its runs are not run records")
    except (ValueError, KeyError, TypeError) as err:  # not JSON, or JSON of something else
        raise UserError(f"--from-summary {summary_json} is not a summary.json that reproduce wrote "
                        f"({type(err).__name__}: {err}): give one, e.g. results/summary.json") from None
    sweeps = config.get("sweeps") or []
    if "planned_groups" not in config and sweeps and all(Path(f).is_file() for f in sweeps):
        config["planned_groups"] = planned_groups(sweeps)
    return write_summary(runs, config, output)


def write_summary(records: list[dict], config: dict, output: Path) -> dict:
    """Every table and verdict of the run ``records`` (``record``) into ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    fixed_paper = [{**r, "alpha": r["alpha_init"]} for r in records
                   if r["setting"] == "paper" and r["kl_target"] is None]
    sweep_rows = summarise(fixed_paper)
    datasets = sorted({r["dataset"] for r in records})
    settings = sorted({r["setting"] for r in records}, key=lambda s: (s != "paper", len(s), s))
    summary = {
        "config": config,
        "paper": PAPER,
        "results": {d: {s: comparison(records, d, s) for s in settings} for d in datasets},
        "sweep": sweep_rows,
        "constrained": constrained_rows(records),
        "front": {f"{d}/{s}": verdicts.front(records, d, s) for d, s in verdicts.settings(records)},
        "constrained_vs_front": verdicts.constrained_vs_front(records),
        "claims": verdicts.claims(records),
        "noise": verdicts.noise(records),
        "seeds_per_group": seeds_per_group(records, config.get("planned_groups")),
        "runs": records,
    }
    summary["recommendation"] = recommend(records)
    # whole or not at all: the next piece of a reproduction reads summary.json (kept.py)
    atomic.write_text(output / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    atomic.write_text(output / "summary.md", summary_md.render(summary))
    results_figures.write_all(summary, records, output)
    claims_figures.write_all(records, PAPER, output)
    return summary
