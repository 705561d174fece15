"""The runs of a reproduction: found through the sweep records, or in gathered run folders.

A run is known by its folder (``RUNS/NAME/version_N``): its ``config.yaml`` says what it is
(dataset, latent size, alpha or the constrained mode's target, seed, epochs) and its
``checkpoints/last.ckpt`` is what gets evaluated, which must be the last epoch.
"""

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from consistency_vae.errors import DataError, UserError
from consistency_vae.reproduction.common import checkpoint_epoch
from consistency_vae.user_files import read_yaml

PAPER_LATENT_DIM = 2
LAST = Path("checkpoints") / "last.ckpt"


@dataclass(frozen=True)
class Run:
    folder: Path
    dataset: str
    latent_dim: int
    seed: int
    alpha: float
    kl_target: float | None  # set: constrained mode, alpha adapted from its initial value
    epochs: int  # trainer.max_epochs
    subset: int | None = None  # data.subset: the first N images only (a quick try)
    key: str | None = field(default=None, compare=False)  # its sweep key (store.run_key), if a sweep ran it
    lr_schedule: str = field(default="constant", compare=False)  # model.lr_schedule (older runs: constant)

    @property
    def name(self) -> str:
        return self.folder.parent.name

    @property
    def setting(self) -> str:
        return "paper" if self.latent_dim == PAPER_LATENT_DIM else f"d{self.latent_dim}"

    @property
    def model(self) -> str:
        if self.kl_target is not None:
            return "constrained"
        return "vae" if self.alpha == 0 else "consistency" if self.alpha == 1 else f"alpha{self.alpha:g}"

    @property
    def point(self) -> tuple:
        """What makes two runs the same grid point."""
        return (self.dataset, self.latent_dim, self.alpha, self.kl_target, self.seed, self.epochs,
                self.subset)

    @property
    def order(self) -> tuple:
        """Datasets, then settings, fixed alphas before constrained targets, then seeds."""
        return (self.dataset, self.latent_dim, self.kl_target is not None, self.kl_target or 0.0,
                self.alpha, self.seed, self.epochs)

    @classmethod
    def from_folder(cls, folder: Path, key: str | None = None) -> "Run":
        fix = "fix it, or move its run folder out of the folder that reproduce reads"
        config = read_yaml(folder / "config.yaml", fix)
        try:
            model = config["model"]
            constrained = model.get("alpha_mode", "fixed") == "constrained"
            return cls(folder=folder, dataset=config["data"]["dataset"],
                       latent_dim=int(model["latent_dim"]), seed=int(config["seed_everything"]),
                       alpha=float(model["alpha"]),
                       kl_target=float(model["kl_target"]) if constrained else None,
                       epochs=int(config["trainer"]["max_epochs"]), subset=config["data"].get("subset"),
                       key=key, lr_schedule=model.get("lr_schedule", "constant"))
        except (KeyError, TypeError, ValueError, AttributeError) as err:  # a key missing or malformed
            raise DataError(f"{folder / 'config.yaml'} lacks a setting of the run ({type(err).__name__}: "
                            f"{err}): {fix}") from None


def from_records(records: list[dict]) -> list[Run]:
    """The runs of a sweep's finished records (``SweepStore.records()``)."""
    runs = []
    for record in records:
        if record["status"] != "finished":
            continue
        if not record.get("run_dir") or not (Path(record["run_dir"]) / "config.yaml").is_file():
            print(f"reproduce: run {record['id']} finished but its run folder {record.get('run_dir')} "
                  "has no config.yaml; left out", file=sys.stderr)
            continue
        runs.append(Run.from_folder(Path(record["run_dir"]), record.get("key")))
    return sorted(runs, key=lambda r: r.order)


def from_folders(root: Path, epochs: int | None = None, subset: int | None = None) -> list[Run]:
    """Every run folder under ``root`` (gathered from many machines, in any layout) with a
    last.ckpt; of two folders of the same grid point, the one trained last counts.

    One reproduction is one length of training on one data set: only the runs of ``epochs``
    and ``subset`` count (default: the most common pair), and the others are named.
    """
    if not root.is_dir():
        raise UserError(f"--from-runs {root}: no such folder: give the folder the run folders were "
                        "gathered into")
    best: dict[tuple, Run] = {}
    for config in sorted(root.rglob("config.yaml")):
        if not (config.parent / LAST).is_file():
            continue
        run = Run.from_folder(config.parent)
        other = best.get(run.point)
        if other is not None:
            older, run = sorted([other, run], key=lambda r: (r.folder / LAST).stat().st_mtime)
            print(f"reproduce: {older.folder} and {run.folder} are the same run; using the newer, "
                  f"{run.folder}", file=sys.stderr)
        best[run.point] = run
    if not best:
        raise UserError(f"--from-runs {root}: no run folder (config.yaml and {LAST}) under it")
    kinds = Counter((r.epochs, r.subset) for r in best.values())
    kind = (epochs or kinds.most_common(1)[0][0][0], subset if epochs else kinds.most_common(1)[0][0][1])
    if kind not in kinds:
        raise UserError(f"--from-runs {root}: no run of {kind[0]} epochs on subset {kind[1]}; the runs "
                        f"there are (epochs, subset): {dict(kinds)}: give --epochs (and --subset) of one")
    if len(kinds) > 1:
        print(f"reproduce: using the {kinds[kind]} runs of {kind[0]} epochs, subset {kind[1]}; left out: "
              + ", ".join(f"{n} of {e} epochs, subset {s}" for (e, s), n in kinds.items() if (e, s) != kind),
              file=sys.stderr)
    return sorted((r for r in best.values() if (r.epochs, r.subset) == kind), key=lambda r: r.order)


def check_last_epochs(runs: list[Run]) -> None:
    """Refuse to evaluate a run whose last.ckpt is not its last epoch (the paper reports the
    model after 25 epochs; an earlier checkpoint would quietly report another model)."""
    early = [(r, epoch) for r in runs if (epoch := checkpoint_epoch(r.folder / LAST)) != r.epochs - 1]
    if early:
        listed = "; ".join(f"{r.folder}: epoch {e} of 0..{r.epochs - 1}" for r, e in early)
        raise UserError(f"{len(early)} runs would be evaluated before their last epoch ({listed}): "
                        "resume them (run the same reproduce or sweep command again) or delete their "
                        "folders and train them again")
