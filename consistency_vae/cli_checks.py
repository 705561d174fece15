"""Checks and outputs of the LightningCLI commands, kept out of training_cli.py.

- Nothing reports success for work it did not do: an overlay config alone, a batch larger than
  the training split, or a fit that trained no step is refused or fails, never "Done".
- A library's refusal that is really a configuration error (Lightning's
  MisconfigurationException, wandb's UsageError) becomes one line with the fix.
- ``predict`` writes the posterior means, log-variances and labels it computed.
"""

import math
import os
import re
from pathlib import Path

import torch
import yaml
from jsonargparse import Namespace

from consistency_vae import data_files
from consistency_vae.errors import ConfigError, UserError
from consistency_vae.tracking import _has_wandb_credentials

BASE_CONFIG = data_files.DEFAULT_DATA_DIR.parent / "configs" / "mnist.yaml"


def _as_list(value) -> list:
    return value if isinstance(value, list) else [] if value in (None, False, True) else [value]


def _class_name(node) -> str:
    return str(node.get("class_path", "")).rsplit(".", 1)[-1] if isinstance(node, Namespace) else ""


def refuse_overlay_alone(files: list[str]) -> None:
    """An overlay (configs/fashion_mnist.yaml) sets no trainer: alone, it would train into
    lightning_logs/ with no checkpoints, figures, W&B or run name. Refuse it, naming the base."""
    if not files or not all(Path(f).is_file() for f in files):  # none, or a config given inline
        return
    contents = [yaml.safe_load(Path(f).read_text()) for f in files]  # the parser has read them
    if any(isinstance(c, dict) and "trainer" in c for c in contents):
        return
    base = "configs/mnist.yaml" if Path("configs/mnist.yaml").is_file() else str(BASE_CONFIG)
    names = " ".join(f"--config {f}" for f in files)
    # Under make (MAKELEVEL is set for the commands it runs), in the form the user typed:
    # `make train` passes --config $(CONFIG), the base by default, then $(ARGS)
    fix = (f'make train ARGS="{names}" (CONFIG stays the base, {base})' if os.environ.get("MAKELEVEL")
           else f"--config {base} {names}")
    raise ConfigError(
        f"{', '.join(map(str, files))} only overlays a base config (it sets no trainer: no run folder, "
        f"checkpoints, figures or W&B): put the base first: {fix}")


def refuse_wandb_online_without_key(config: Namespace) -> None:
    """WANDB_MODE=online with no credentials: wandb.init would fail at setup, after work began."""
    if os.environ.get("WANDB_MODE") != "online":
        return
    if not any(_class_name(lg) == "WandbLogger" for lg in _as_list(config.trainer.get("logger"))):
        return
    if not _has_wandb_credentials():
        raise UserError("WANDB_MODE=online, but W&B has no API key (WANDB_API_KEY, ~/.netrc): run "
                        "`wandb login`, or use WANDB_MODE=offline (upload later with `wandb sync`) or "
                        "WANDB_MODE=disabled")


def refuse_empty_epochs(datamodule, trainer) -> None:
    """A batch larger than the training split trains nothing (the incomplete batch is dropped):
    refuse it before any data is loaded, naming the split's size. Likewise a fractional
    ``trainer.limit_*_batches`` that leaves a process no batch of a split (``refuse_empty_limits``)."""
    hp = datamodule.hparams
    sizes = datamodule.split_sizes()
    images = sizes["train"]
    if hp.subset:
        images = min(images, hp.subset)
    per_process = images // trainer.world_size
    if hp.batch_size > per_process:
        where = f", {per_process} per process on {trainer.world_size}" if trainer.world_size > 1 else ""
        size = (f"data.subset={hp.subset}" if hp.subset and images == hp.subset
                else f"{sizes['train'] + sizes['val']} - data.val_size={sizes['val']}")
        raise ConfigError(
            f"data.batch_size={hp.batch_size} is larger than the training split ({images} images: "
            f"{size}{where}), so no step would be trained: use --data.batch_size <= {per_process}")
    refuse_empty_limits(datamodule, trainer, ("train", "val", "test"))


def fewest_batches(images: int, batch_size: int, processes: int, drop_last: bool) -> int:
    """Batches of the process that gets the fewest: training drops the incomplete batch of each
    process's equal share (DistributedSampler, drop_last); evaluation deals whole batches of the
    split round-robin (datamodule.UnpaddedDistributedSampler), so the last processes get one less."""
    if drop_last:
        return images // processes // batch_size
    return -(-images // batch_size) // processes


def _limited(batches: int, limit: int | float) -> int:
    """Lightning's count of batches after ``limit_*_batches`` (data_connector._parse_num_batches)."""
    return min(batches, limit) if isinstance(limit, int) else int(batches * limit)


def least_fraction(batches: int) -> float:
    """The smallest fraction of 3 decimals that keeps one of ``batches`` (0.334 of 3)."""
    least = math.ceil(1000 / batches) / 1000
    while _limited(batches, least) < 1:  # int(batches * least) rounded below 1 in binary
        least = round(least + 0.001, 3)
    return least


def refuse_empty_limits(datamodule, trainer, splits: tuple[str, ...]) -> None:
    """A fraction ``trainer.limit_SPLIT_batches`` that rounds a process's batches down to 0.

    Lightning refuses it only on the processes it happens to, and under DDP the others then die
    waiting for them (a gloo traceback). The count is computed here from the split's size, the
    batch size and the limit, the same on every process, before the trainer runs.
    """
    if trainer.fast_dev_run:  # its own integer limits
        return
    hp, sizes, world = datamodule.hparams, datamodule.split_sizes(), trainer.world_size
    loop = {"train": "training", "val": "validation", "test": "test"}
    for split in splits:
        limit = getattr(trainer, f"limit_{split}_batches")
        images = min(sizes[split], hp.subset) if hp.subset else sizes[split]
        size = hp.batch_size if split == "train" else hp.eval_batch_size
        batches = fewest_batches(images, size, world, drop_last=split == "train")
        if not isinstance(limit, float) or limit <= 0 or batches == 0 or _limited(batches, limit) > 0:
            continue  # 0: no such loop; 0 batches: refused elsewhere, with its own fix
        least = least_fraction(batches)
        per = f" on the process with the fewest, of {world}" if world > 1 else ""
        key = "batch_size" if split == "train" else "eval_batch_size"
        raise ConfigError(
            f"--trainer.limit_{split}_batches={limit} keeps int({batches} x {limit}) = 0 {loop[split]} "
            f"batches ({images} images in batches of data.{key}={size}: {batches}{per}), so that loop "
            f"would run none: use --trainer.limit_{split}_batches >= {least:g}, or a whole number of "
            "batches (e.g. 1)")


def refuse_untrained(trainer) -> None:
    """A fit that trained no step fails (exit 1) instead of testing the untrained model."""
    if trainer.global_step == 0:
        raise UserError(
            "fit trained no step (see Lightning's message above), so nothing was tested: check "
            "trainer.max_epochs, trainer.max_steps and trainer.limit_train_batches")


def save_predictions(trainer, datamodule) -> list[Path]:
    """The predicted split's posterior means (N, D), log-variances (N, D) and labels (N,), as
    ``predictions_SPLIT.pt`` (torch) and ``.npz`` (numpy) in the run's predict folder."""
    import numpy as np

    batches = trainer.predict_loop.predictions or []
    if not batches:
        return []
    out = {k: torch.cat([b[k] for b in batches]).cpu() for k in ("mu", "logvar", "label")}
    split = datamodule.hparams.get("predict_split", "test")
    rank = f"_rank{trainer.global_rank}" if trainer.world_size > 1 else ""
    folder = Path(trainer.log_dir or ".")
    folder.mkdir(parents=True, exist_ok=True)
    pt, npz = folder / f"predictions_{split}{rank}.pt", folder / f"predictions_{split}{rank}.npz"
    torch.save({**out, "split": split}, pt)
    np.savez(npz, **{k: v.numpy() for k, v in out.items()})
    return [pt, npz]


def _trainer_flag(text: str) -> str | None:
    """The first backquoted name in Lightning's message that is a Trainer argument: "check 0.5 of
    the `val_dataloader` ... increase the `limit_val_batches` argument" names limit_val_batches."""
    import inspect

    from lightning.pytorch import Trainer

    flags = inspect.signature(Trainer.__init__).parameters
    return next((name for name in re.findall(r"`(\w+)", text) if name in flags), None)


def describe_library_error(err: Exception) -> str | None:
    """One line with the fix for a library error caused by the configuration, else None."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    text = " ".join(str(err).split())
    if isinstance(err, MisconfigurationException):
        if "gpu backend" in text or "accelerator is not available" in text:
            return (f"no GPU that torch can use on this machine ({text}): use "
                    "--trainer.accelerator=cpu, or auto to use a GPU only where there is one")
        flag = _trainer_flag(text)
        where = f"--trainer.{flag}" if flag else "the --trainer.KEY flag"
        return (f"Lightning refuses the trainer settings: {text.replace('`', '')} Fix {where} "
                "(or the trainer: section of the config)")
    if type(err).__module__.startswith("wandb") and type(err).__name__ == "UsageError":
        return (f"W&B refused to start: {text} Run `wandb login` (or set WANDB_API_KEY), or use "
                "WANDB_MODE=offline (upload later with `wandb sync`) or WANDB_MODE=disabled")
    return None
