"""`consistency-vae runs [DIR]`: the run folders under DIR, one row each, as a table or as CSV.

    consistency-vae runs                      # every run under runs/
    consistency-vae runs runs/reproduce --csv runs.csv

A run folder is a ``version_N`` folder that ``fit`` wrote (its ``config.yaml`` and
``checkpoints/`` or ``status.json``). Everything comes from the folder's own files: the setting
from config.yaml, the epochs done from ``checkpoints/last.ckpt``, the status from
``status.json`` (see run_record), the test numbers from the run's merged metrics record.
"""

import csv
import math
import sys
from pathlib import Path

from consistency_vae import ckpt_peek, cli_help, run_record
from consistency_vae.errors import UserError
from consistency_vae.user_files import read_yaml

COLUMNS = ("run", "dataset", "mode", "alpha", "epsilon", "latent_dim", "seed", "epochs", "max_epochs",
           "status", "best_test_elbo", "best_test_kl_consistency", "last_test_elbo",
           "last_test_kl_consistency")
STATUS_HELP = ("finished: every epoch trained; interrupted: Ctrl-C, SIGTERM, or an older run that "
               "stopped early (resume with --ckpt_path last); failed: stopped by an error; "
               "running or killed: no clean end recorded (still running, or SIGKILLed: resumable)")


def find_run_folders(root: Path) -> list[Path]:
    """Every folder under ``root`` (root itself included) that a ``fit`` wrote, sorted."""
    candidates = [root, *(p.parent for p in root.rglob("config.yaml"))]
    return sorted({p for p in candidates if (p / "config.yaml").is_file()
                   and ((p / "checkpoints").is_dir() or (p / run_record.STATUS).is_file())})


def epochs_done(folder: Path) -> int | None:
    """Whole epochs trained, as last.ckpt says (a resume starts there), else as status.json says.
    The counter is read without torch (ckpt_peek): this command needs no model."""
    last = folder / "checkpoints" / "last.ckpt"
    try:
        saved = ckpt_peek.read(last)
        return int(saved["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except Exception:  # noqa: BLE001 - missing or unreadable: fall back to the status file
        return run_record.read_status(folder).get("epochs_done")


def test_numbers(rows: list[dict[str, str]]) -> dict[str, float]:
    """best: the test of the best checkpoint after fit (the rows with test/loss); last: the test
    set after the last epoch trained (TestSetConsistency's rows)."""
    out = {}
    final = [r for r in rows if run_record.is_final_test(r)]
    per_epoch = [r for r in rows if "test/elbo" in r and not run_record.is_final_test(r)]
    for which, chosen in (("best", final), ("last", per_epoch)):
        for name in ("elbo", "kl_consistency"):
            values = [float(r[f"test/{name}"]) for r in chosen if f"test/{name}" in r]
            out[f"{which}_test_{name}"] = values[-1] if values else math.nan
    return out


def run_row(folder: Path, root: Path) -> dict:
    config = read_yaml(folder / "config.yaml", "fix or delete it (fit writes it when a run starts), "
                       "or move the run folder out of the listed folder")
    model, data, trainer = (config.get(k) or {} for k in ("model", "data", "trainer"))
    constrained = model.get("alpha_mode") == "constrained"
    done, max_epochs = epochs_done(folder), trainer.get("max_epochs")
    status = run_record.read_status(folder).get("status")
    if status == "running":
        status = "running or killed"
    elif status is None:  # a run from before status.json
        finished = done is not None and max_epochs is not None and done >= max_epochs
        status = "finished" if finished or (folder / "DONE").is_file() else "interrupted"
    return {"run": str(folder.relative_to(root)) if folder != root else str(folder),
            "dataset": data.get("dataset"), "mode": "constrained" if constrained else "fixed",
            "alpha": model.get("alpha"), "epsilon": model.get("kl_target") if constrained else None,
            "latent_dim": model.get("latent_dim"), "seed": config.get("seed_everything"),
            "epochs": done, "max_epochs": max_epochs, "status": status,
            **test_numbers(run_record.merged_rows(folder))}


def _cell(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(rows: list[dict]) -> str:
    """A plain-text table: the setting, progress and test numbers of each run."""
    header = ["run", "dataset", "alpha / eps", "latent", "seed", "epochs", "status",
              "ELBO best", "ELBO last", "KL(z'||z) best", "KL(z'||z) last"]
    lines = [[r["run"], r["dataset"] or "-",
              f"eps {r['epsilon']:g}" if r["epsilon"] is not None else f"alpha {r['alpha']:g}"
              if isinstance(r["alpha"], int | float) else "-",
              _cell(r["latent_dim"]), _cell(r["seed"]), f"{_cell(r['epochs'])}/{_cell(r['max_epochs'])}",
              r["status"], _cell(r["best_test_elbo"]), _cell(r["last_test_elbo"]),
              _cell(r["best_test_kl_consistency"], 3), _cell(r["last_test_kl_consistency"], 3)]
             for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    fmt = "  ".join(f"{{:{'<' if i < 3 or i == 6 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*line) for line in [header, *lines])


def write_csv(rows: list[dict], out) -> None:
    writer = csv.DictWriter(out, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
                      for k, v in r.items()} for r in rows)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = cli_help.command_parser("consistency-vae runs", __doc__.split("\n")[0])
    parser.epilog = (f"status: {STATUS_HELP}. ELBO and KL(z'||z) are test-set values in nats; best: "
                     "the best checkpoint's, tested after fit; last: after the last epoch trained.")
    parser.add_argument("dir", nargs="?", default="runs", metavar="DIR",
                        help="the folder that holds the run folders (fit's trainer.default_root_dir)")
    parser.add_argument("--csv", nargs="?", const="-", default=None, metavar="PATH",
                        help="write the rows as CSV to PATH (no PATH: to stdout) instead of the table")
    args = parser.parse_args(argv)

    root = Path(args.dir)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder: give the folder that holds the run folders (fit's "
                        "--trainer.default_root_dir, default runs)")
    rows = [run_row(folder, root) for folder in find_run_folders(root)]
    if args.csv == "-":
        write_csv(rows, sys.stdout)
    elif args.csv:
        try:
            with open(args.csv, "w", newline="") as f:
                write_csv(rows, f)
        except OSError as err:  # no such folder, a folder of that name, no permission
            raise UserError(f"--csv {args.csv}: cannot write it ({err.strerror}): give a file path in "
                            "an existing folder, or --csv alone for stdout") from None
        print(f"consistency-vae runs: {len(rows)} runs written to {args.csv}")
    elif rows:
        print(table(rows))
    else:
        print(f"consistency-vae runs: no run folders under {root} (none holds config.yaml and "
              "checkpoints/): train one with `consistency-vae fit`")
    return rows
