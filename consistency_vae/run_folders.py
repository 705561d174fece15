"""The run folder (``runs/NAME/version_N``): resume the right one, never clobber a finished one,
and find out that it cannot be written before any work is done.

The first logger (the CSVLogger of ``configs/mnist.yaml``) names the folder; ModelCheckpoint
writes into its ``checkpoints/``. A new ``fit`` gets a new ``version_N``, so Lightning's own
``--ckpt_path last`` lookup, which only looks in the new folder, would find nothing: here
``last`` means the newest ``version_N`` of the same run name that holds ``checkpoints/last.ckpt``.
"""

import errno
import os
import re
import shutil
import sys
from pathlib import Path

from jsonargparse import Namespace

from consistency_vae import run_record
from consistency_vae.errors import CheckpointError, UserError

VERSIONED_LOGGERS = ("CSVLogger", "TensorBoardLogger")  # loggers that number runs version_N
LAST = Path("checkpoints") / "last.ckpt"
# Files a new attempt in the same folder would delete (CSVLogger: metrics.csv), refuse to
# overwrite (SaveConfigCallback: config.yaml) or rewrite (hparams.yaml).
ATTEMPT_FILES = ("metrics.csv", "config.yaml", "hparams.yaml")
PROBE_BYTES = 1 << 20  # the probe file: 1 MiB, so a nearly full disk fails here too


def is_main_process() -> bool:
    """Rank 0 of node 0, known from the environment before Lightning sets up any strategy
    (the DDP launcher re-runs the command for the other ranks with LOCAL_RANK/NODE_RANK set)."""
    return all(int(os.environ.get(v, 0)) == 0 for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def resolve(subcommand: str, config: Namespace) -> tuple[Path, Path | None]:
    """Settle the run folder in the parsed config (in place), before anything is built.

    ``fit --ckpt_path last`` becomes the last.ckpt of the newest ``version_N`` of the run name
    that has one, and the logger writes into that folder again. A fit into an explicitly
    versioned folder that holds checkpoints is refused unless it resumes. Returns (the logger's
    save_dir, the run folder when its version is known).
    """
    logger = versioned_logger(config.trainer)
    if logger is None:
        return Path(config.trainer.default_root_dir or "."), None
    save_dir = logger.save_dir or config.trainer.default_root_dir
    if subcommand == "fit" and config.ckpt_path == "last":
        if logger.version is None:  # an explicit version resumes that folder, else the newest
            logger.version = latest_resumable(save_dir, logger.name)
        last = run_dir(save_dir, logger.name, logger.version) / LAST
        if not last.is_file():
            raise CheckpointError(f"--ckpt_path last: {last} does not exist: drop the logger's version "
                                  "to resume the newest run of this name")
        config.ckpt_path = str(last)
        check_training_left(last, config.trainer)
        print(f"consistency-vae: resuming from {config.ckpt_path}", file=sys.stderr)
    folder = None if logger.version is None else run_dir(save_dir, logger.name, logger.version)
    if subcommand == "fit":  # a resumed folder continues its W&B run; a new run gets a new one
        run_record.set_wandb_run_id(config.trainer, folder if config.ckpt_path else None)
    if folder is not None and is_main_process():
        if subcommand == "fit" and config.ckpt_path is None:
            check_not_finished(folder)
        elif subcommand != "fit" and (logs := [f for f in ATTEMPT_FILES if (folder / f).is_file()]):
            raise UserError(f"{folder} holds the logs of a run ({', '.join(logs)}), which `{subcommand}` "
                            "would replace, and nothing was changed: leave the logger's version unset, "
                            "so this command gets a new version_N")
    return Path(save_dir), folder


def versioned_logger(trainer_config: Namespace) -> Namespace | None:
    """The ``init_args`` of the first logger if it numbers its runs ``version_N``, else None."""
    loggers = trainer_config.get("logger")
    first = loggers[0] if isinstance(loggers, list) and loggers else loggers
    if not isinstance(first, Namespace):
        return None
    return first.init_args if str(first.get("class_path")).rsplit(".", 1)[-1] in VERSIONED_LOGGERS else None


def run_dir(save_dir: str, name: str, version: int | str) -> Path:
    return Path(save_dir) / str(name) / (version if isinstance(version, str) else f"version_{version}")


def latest_resumable(save_dir: str, name: str) -> int:
    """The highest N such that ``save_dir/name/version_N`` holds checkpoints/last.ckpt."""
    root = Path(save_dir) / str(name)
    found = [int(m.group(1)) for d in (root.iterdir() if root.is_dir() else [])
             if (m := re.fullmatch(r"version_(\d+)", d.name)) and (d / LAST).is_file()]
    if not found:
        raise CheckpointError(
            f"--ckpt_path last: no run in {root}/version_* has a {LAST} to resume. Start the run "
            "without --ckpt_path, or pass the path of a .ckpt file")
    return max(found)


def check_not_finished(folder: Path) -> None:
    """Refuse a folder that already holds checkpoints of another run, when not resuming it."""
    ckpts = sorted(p.name for p in (folder / "checkpoints").glob("*.ckpt"))
    if ckpts:
        raise UserError(
            f"{folder} already holds a run ({', '.join(ckpts[:3])} in checkpoints/), and nothing "
            "was changed: pass --ckpt_path last to resume it, or give the first logger (the CSVLogger) "
            "another name or version; with no version, each run gets a new version_N")


def check_training_left(ckpt: Path, trainer_config: Namespace) -> None:
    """Refuse to resume a run whose training is over, before anything is changed: Lightning would
    skip training, test again, and a one-row metrics.csv would replace the run's log."""
    import torch

    try:
        saved = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        done = saved["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]  # whole epochs
    except Exception:  # noqa: BLE001 - not readable here: the checkpoint checks that follow say why
        return
    max_steps = trainer_config.get("max_steps") or -1
    max_epochs = trainer_config.get("max_epochs")
    if max_epochs is None:  # Lightning's default: 1000 epochs, unless max_steps is set
        max_epochs = 1000 if max_steps == -1 else -1
    if max_epochs != -1 and done >= max_epochs:
        why = f"all {done} of its --trainer.max_epochs={max_epochs} epochs are done"
        fix = f"add --trainer.max_epochs=N with N > {done} to train longer"
    elif max_steps != -1 and saved.get("global_step", 0) >= max_steps:
        why = f"all {saved['global_step']} of its --trainer.max_steps={max_steps} steps are done"
        fix = f"add --trainer.max_steps=N with N > {saved['global_step']} to train longer"
    else:
        return
    raise UserError(f"--ckpt_path last: {ckpt} ends a finished run ({why}), and nothing was "
                    f"changed: {fix}, or measure it with `consistency-vae evaluate --ckpt_path {ckpt}`")


def keep_previous_attempt(folder: Path) -> list[Path]:
    """Rename the logs of an earlier attempt in ``folder`` to ``NAME.attemptK.EXT``; return them.

    A resumed run writes into the same folder, where CSVLogger would delete metrics.csv and
    SaveConfigCallback would refuse to replace config.yaml. K is the first free number.
    """
    present = [folder / f for f in ATTEMPT_FILES if (folder / f).is_file()]
    if not present:
        return []
    k = 1
    while any((folder / f"{p.stem}.attempt{k}{p.suffix}").exists() for p in present):
        k += 1
    kept = [folder / f"{p.stem}.attempt{k}{p.suffix}" for p in present]
    for old, new in zip(present, kept, strict=True):
        os.replace(old, new)
    return kept


def check_writable(folder: Path, need_bytes: int = 0) -> None:
    """Create ``folder`` if needed, write and delete a probe file, and check the free space.

    Raises UserError naming the folder, the reason and the fix: a read-only or full disk should
    cost seconds, not a run that dies at its first checkpoint.
    """
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        what = "is full (no space left, or over quota)" if full else f"cannot be written ({err.strerror})"
        fix = "free some space" if full else "fix its permissions"
        raise UserError(f"output folder {folder} {what}: {fix}, or write elsewhere with "
                        "--trainer.default_root_dir=DIR") from err
    finally:
        probe.unlink(missing_ok=True)
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise UserError(f"output folder {folder} has {free / 2**20:.1f} MiB free, but the checkpoints "
                        f"of this run need about {need_bytes / 2**20:.1f} MiB: free some space, or write "
                        "elsewhere with --trainer.default_root_dir=DIR")


def evaluation_output(subcommand: str, config: Namespace) -> None:
    """Point test/validate/predict at the checkpoint's run folder (in place): evaluating is not a
    new run. The first (versioned) logger writes into ``RUN/SUBCOMMAND/version_K`` of the run that
    holds ``--ckpt_path`` (``RUN/checkpoints/*.ckpt``), and W&B is dropped unless ``--wandb``."""
    loggers = config.trainer.get("logger")
    if not config.get("wandb") and isinstance(loggers, list | Namespace):
        kept = [lg for lg in (loggers if isinstance(loggers, list) else [loggers])
                if str(lg.get("class_path", "")).rsplit(".", 1)[-1] != "WandbLogger"]
        config.trainer.logger = kept
    logger = versioned_logger(config.trainer)
    ckpt = config.get("ckpt_path")
    if logger is None or not ckpt or not Path(ckpt).is_file():  # no file: the aliases and errors
        return
    run = Path(ckpt).resolve().parent
    run = run.parent if run.name == "checkpoints" else run
    logger.save_dir, logger.name, logger.version = str(run), subcommand, None


def is_evaluation_folder(folder: Path) -> bool:
    """``RUN/test/version_K`` and the like (see evaluation_output): an evaluation of a run, with its
    own config.yaml and metrics.csv, but not a run."""
    return (folder.parent.name in ("validate", "test", "predict")
            and (folder.parent.parent / "config.yaml").is_file())
