"""``consistency-vae sweep-report RUNS_DIR --output DIR``: what alpha does, mean ± std over seeds.

Writes ``DIR/alpha_sweep.csv`` (one row per dataset and alpha) and ``DIR/alpha_tradeoff.png`` (every
metric against alpha). Each run's final test metrics come from its folder (``runs/NAME/version_N``):
``metrics.csv`` (the last logged ``test/...`` value: the test of the best checkpoint at the end of
``fit``) and, where ``consistency-vae evaluate`` has written a ``metrics.json`` inside the run
folder, its values, which win (they use the full K for IWAE and include the probe accuracy).
Where the folder holds ``sweep-*/manifest.json`` files, only the runs they list as finished count,
so a crashed run's partial metrics never enter a mean; without one, every run folder with test
metrics counts.
"""

import csv
import json
import math
from pathlib import Path

from consistency_vae import alpha_choice, cli_help, run_folders
from consistency_vae.errors import ConfigError
from consistency_vae.evaluation.live_views import LiveTuple
from consistency_vae.user_files import check_output_folder, read_json, read_yaml


def _report_rows() -> tuple:
    from consistency_vae.evaluation import eval_metrics  # torch: not for `sweep-report --help`

    return eval_metrics.report_rows()


# Report metrics: (key in metrics.json and after "test/" in metrics.csv, label, better), the
# evaluation metrics registry's keys with a label and a direction: a metric registered there is a
# column here (eval_metrics.py).
METRICS = LiveTuple(_report_rows)
BAD_RUN_FILE = "fix or delete it, or move its run folder out of the sweep's --runs_dir"


# --- collecting runs (pure file reading) --------------------------------------------------
def last_values(metrics_csv: Path) -> dict[str, float]:
    """The last non-empty value of every column of a Lightning CSVLogger metrics.csv."""
    values: dict[str, float] = {}
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            values.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return values


def read_run(run_dir: Path) -> dict | None:
    """One run's dataset, alpha, seed and final test metrics, or None without test metrics."""
    config = read_yaml(run_dir / "config.yaml", BAD_RUN_FILE)
    logged = last_values(run_dir / "metrics.csv") if (run_dir / "metrics.csv").is_file() else {}
    metrics = {m: logged[f"test/{m}"] for m, _, _ in METRICS if f"test/{m}" in logged}
    for path in sorted(run_dir.rglob("metrics.json")):  # evaluate's output, if kept in the run folder
        evaluated = read_json(path, BAD_RUN_FILE)
        metrics.update({m: float(evaluated[m]) for m, _, _ in METRICS
                        if isinstance(evaluated.get(m), int | float)})
    if not metrics:
        return None
    return {"run_dir": str(run_dir), "dataset": config["data"]["dataset"],
            "alpha": float(config["model"]["alpha"]), "seed": config.get("seed_everything"), **metrics}


def find_runs(runs_dir: Path) -> list[dict]:
    """Finished runs under ``runs_dir``: those the sweep manifests list, else every run folder."""
    manifests = sorted(runs_dir.glob("sweep-*/manifest.json"))
    if manifests:
        folders = [Path(run["run_dir"]) for m in manifests for run in json.loads(m.read_text())["runs"]
                   if run["status"] == "finished" and run.get("run_dir")]
    else:
        folders = [p.parent for p in runs_dir.rglob("config.yaml") if (p.parent / "metrics.csv").is_file()
                   and not run_folders.is_evaluation_folder(p.parent)]
    runs = [r for r in (read_run(f) for f in sorted(set(folders))) if r is not None]
    if not runs:
        raise ConfigError(f"no finished runs with test metrics under {runs_dir}: give the --runs_dir "
                          "of a `consistency-vae sweep` (default runs)")
    return runs


# --- summarising (pure) -------------------------------------------------------------------
def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the std of a single seed is NaN, not 0."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (dataset, alpha): n_runs, seeds, ``{metric}_mean`` / ``{metric}_std``, and the
    alpha rule on the means (``mark_best``)."""
    rows = []
    for dataset, alpha in sorted({(r["dataset"], r["alpha"]) for r in runs}):
        group = [r for r in runs if r["dataset"] == dataset and r["alpha"] == alpha]
        row = {"dataset": dataset, "alpha": alpha, "n_runs": len(group),
               "seeds": " ".join(str(r["seed"]) for r in group)}
        for m, _, _ in METRICS:
            values = [r[m] for r in group if m in r]
            row[f"{m}_mean"], row[f"{m}_std"] = mean_std(values) if values else (math.nan, math.nan)
        rows.append(row)
    return mark_best(rows)


def mark_best(rows: list[dict]) -> list[dict]:
    """Each row's ``constrained_elbo`` of its test means and ``within_budget``, and per dataset
    ``best`` on the alpha the rule picks (``alpha_choice.best``, the sweep metric's rule)."""
    for row in rows:
        row["constrained_elbo"] = alpha_choice.constrained_elbo(row["elbo_mean"], row["kl_consistency_mean"])
        row["within_budget"] = row["kl_consistency_mean"] <= alpha_choice.KL_BUDGET
        row["best"] = False
    for dataset in {r["dataset"] for r in rows}:
        if choice := alpha_choice.best([r for r in rows if r["dataset"] == dataset]):
            choice.row["best"] = True
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    columns = ["dataset", "alpha", "n_runs", "seeds"] + [f"{m}_{s}" for m, _, _ in METRICS
                                                        for s in ("mean", "std")]
    columns += ["constrained_elbo", "within_budget", "best"]  # mark_best: the rule's pick
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else
                             ("yes" if v else "no") if isinstance(v, bool) else v for k, v in row.items()})


def _span(values, unit: str) -> str:
    """``3 epochs``, ``2 to 3 seeds``: the one value, or the range when runs differ."""
    lo, hi = min(values), max(values)
    return f"{lo} {unit}" if lo == hi else f"{lo} to {hi} {unit}"


def tradeoff_figure(rows: list[dict], epochs: list[int] | None = None):
    """Every metric against alpha, a panel each (its own scale: the datasets' ELBOs lie far
    apart), a dataset's panels in rows of at most 4; error bars = std over seeds. The title says
    how many seeds each point has and, given ``epochs`` (of the runs), how long they trained.

    alpha = 0 (the plain VAE) is a point on the axis: a symlog scale, linear below the smallest
    positive alpha and logarithmic above (``ticks.alpha_axis``: a label at each alpha).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from consistency_vae import ticks

    shown = [(m, label, better) for m, label, better in METRICS
             if any(not math.isnan(r[f"{m}_mean"]) for r in rows)]
    datasets = sorted({r["dataset"] for r in rows})
    cols = min(4, len(shown))
    per_dataset = math.ceil(len(shown) / cols)
    fig = Figure(figsize=(3.8 * cols, 3.0 * per_dataset * len(datasets) + 0.5), dpi=100,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(per_dataset * len(datasets), cols, squeeze=False)
    alphas = [r["alpha"] for r in rows]
    for d, dataset in enumerate(datasets):
        panels = axes[d * per_dataset:(d + 1) * per_dataset].ravel()
        for ax, (m, label, better) in zip(panels, shown, strict=False):
            pts = [r for r in rows if r["dataset"] == dataset and not math.isnan(r[f"{m}_mean"])]
            ax.errorbar([r["alpha"] for r in pts], [r[f"{m}_mean"] for r in pts],
                        yerr=[0 if math.isnan(r[f"{m}_std"]) else r[f"{m}_std"] for r in pts],
                        marker="o", capsize=3)
            ticks.alpha_axis(ax, alphas)
            ax.set_xlabel("alpha")
            # a label that already gives the direction, "(lower: more consistent)", says it once
            head, paren = label.split(" (", 1) if f" ({better}" in label else (label, f"{better} is better)")
            ax.set_title(f"{dataset}: {head}\n({paren}", fontsize=10)
            ax.grid(alpha=0.3)
        for ax in panels[len(shown):]:
            ax.axis("off")
    seeds = _span([r["n_runs"] for r in rows], "seeds")
    trained = f", runs of {_span(epochs, 'epochs')}" if epochs else ""
    fig.suptitle(f"Test metrics against alpha, mean ± std over {seeds}{trained}\n"
                 "alpha = 0: the plain VAE; symlog axis, linear below the smallest alpha > 0",
                 fontsize=10)
    return fig


def epochs_trained(runs: list[dict]) -> list[int]:
    """The whole epochs each run trained (``runs.epochs_done``), where its folder records them."""
    from consistency_vae.runs import epochs_done

    return [e for e in (epochs_done(Path(r["run_dir"])) for r in runs) if e is not None]


def report(runs_dir: str | Path, output: str | Path) -> list[dict]:
    runs_dir, output = Path(runs_dir), Path(output)
    if not runs_dir.is_dir():
        raise ConfigError(f"runs folder {runs_dir} " + ("is a file, not a folder" if runs_dir.exists()
                                                        else "does not exist")
                          + ": give the --runs_dir of a sweep")
    check_output_folder(output, "--output")
    runs = find_runs(runs_dir)
    rows = summarise(runs)
    output.mkdir(parents=True, exist_ok=True)
    write_csv(rows, output / "alpha_sweep.csv")
    tradeoff_figure(rows, epochs_trained(runs)).savefig(output / "alpha_tradeoff.png", dpi=150)
    return rows


def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def _mark(row: dict) -> str:
    if not row["best"]:
        return ""
    return "  <- best" if row["within_budget"] else "  <- best (its KL is over the budget)"


def main(argv: list[str]) -> None:
    """consistency-vae sweep-report: alpha_sweep.csv and alpha_tradeoff.png from a sweep's runs."""
    parser = cli_help.command_parser("consistency-vae sweep-report", main.__doc__)
    parser.add_argument("runs_dir", type=str, help="the sweep's --runs_dir (default of the sweep: runs)")
    parser.add_argument("--output", type=str, default="results", help="folder for the CSV and the figure")
    args = parser.parse_args(argv)
    rows = report(args.runs_dir, args.output)  # a UserError reaches cli.py: one line
    print(f"{'dataset':<14}{'alpha':>7}{'runs':>5}  " + "  ".join(f"{m:>20}" for m, _, _ in METRICS))
    for r in rows:
        print(f"{r['dataset']:<14}{r['alpha']:>7g}{r['n_runs']:>5}  "
              + "  ".join(f"{_cell(r[f'{m}_mean'], r[f'{m}_std']):>20}" for m, _, _ in METRICS)
              + _mark(r))
    print(f"best: the alpha rule (docs/method.md#which-alpha) on the test means, the best ELBO among "
          f"alphas whose KL(z'||z) is at most {alpha_choice.KL_BUDGET:g} nat")
    print(f"wrote {Path(args.output) / 'alpha_sweep.csv'} and {Path(args.output) / 'alpha_tradeoff.png'}")
