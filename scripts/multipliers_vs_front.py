"""The multiplier study (docs/method.md, "Which update rule") against the fixed-alpha front.

    consistency-vae sweep sweeps/multiplier_study_2d.yaml --runs_dir runs/multiplier_study   # and _20d
    # the front at the study's learning-rate schedule (the paper's constant rate; the reproduction's
    # sweep files anneal it, so their runs make the front of cosine runs only):
    for part in claims front; do  # alpha 0 and 1, then the other fixed alphas
      consistency-vae sweep sweeps/reproduce_$part.yaml --runs_dir runs/front_constant_lr --parallel 2 \
          --only seed_everything=0 --extra-args --model.lr_schedule=constant
    done
    python scripts/multipliers_vs_front.py [STUDY_GLOB] [FRONT_DIR]     # defaults: the two above

Each run's test KL(z'||z) and ELBO at its last epoch (its per-epoch test log: the numbers of
``evaluate`` on its last.ckpt), against the front of the finished fixed-alpha runs of seed 0, the
study's seed, trained at the same learning-rate schedule as that run (reproduction/verdicts.py),
printed as a markdown table.
"""

import math
import sys
from pathlib import Path

from consistency_vae.reproduction import verdicts
from consistency_vae.reproduction.runs import Run
from consistency_vae.reproduction.summary import epoch_curve


def last_epoch(folder: Path) -> dict | None:
    """The run's record as the summary has it, with the rule's name and arguments; None unfinished."""
    if '"finished"' not in (folder / "status.json").read_text():
        return None
    run = Run.from_folder(folder)
    kl, elbo = (epoch_curve(folder, run.epochs, key) for key in ("test/kl_consistency", "test/elbo"))
    if not kl or math.isnan(kl[-1]):
        return None
    import yaml

    model = yaml.safe_load((folder / "config.yaml").read_text())["model"]
    rule = model.get("multiplier") or {}
    shown = {k: v for k, v in rule.get("init_args", {}).items() if k not in ("ema", "alpha_min", "alpha_max")}
    return {"dataset": run.dataset, "setting": run.setting, "kl_target": run.kl_target, "seed": run.seed,
            "alpha_init": run.alpha, "model": run.model, "kl_consistency": kl[-1], "elbo": elbo[-1],
            "rule": f"{rule.get('class_path', 'DualAscent').rsplit('.', 1)[-1]} {shown}",
            "lr_schedule": model.get("lr_schedule", "constant")}


def main(study_glob: str = "runs/multiplier_study*", front_dir: str = "runs/front_constant_lr") -> None:
    def records(folders):
        return [r for f in folders if (r := last_epoch(f.parent)) is not None]

    fixed = [r for r in records(Path(front_dir).glob("*/version_*/status.json"))  # the study's seed: 0
             if r["kl_target"] is None and r["seed"] == 0]
    study = records(Path().glob(f"{study_glob}/*/version_*/status.json"))
    missing = {r["lr_schedule"] for r in study} - {r["lr_schedule"] for r in fixed}
    if missing:
        sys.exit(f"no finished fixed-alpha run of seed 0 at lr_schedule={', '.join(sorted(missing))} in "
                 f"{front_dir}: a front compares only runs trained alike; train one as this file's "
                 "docstring shows and give its folder as the second argument")
    print(f"front: {len(fixed)} fixed-alpha runs of {front_dir}; study: {len(study)} runs\n")
    print("| setting | epsilon | rule | KL (vs epsilon) | ELBO | front at that KL (alphas) | ELBO - front |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in sorted(study, key=lambda r: (r["dataset"], r["setting"], r["kl_target"], r["rule"])):
        alike = [f for f in fixed if f["lr_schedule"] == r["lr_schedule"]]
        at = verdicts.front_at(verdicts.front(alike, r["dataset"], r["setting"]), r["kl_consistency"],
                               verdicts.largest_kl(alike, r["dataset"], r["setting"]))
        lo, hi = at["between_alphas"] if at else (None, None)
        where = f"{at['elbo']:.2f} ({lo:g}-{hi:g})" if at else "outside"
        print(f"| {r['dataset']} {r['setting']} | {r['kl_target']:g} | {r['rule']} "
              f"| {r['kl_consistency']:.3f} ({r['kl_consistency'] / r['kl_target'] - 1:+.1%}) "
              f"| {r['elbo']:.2f} | {where} | "
              + (f"{r['elbo'] - at['elbo']:+.2f} |" if at else "- |"))


if __name__ == "__main__":
    main(*sys.argv[1:])
