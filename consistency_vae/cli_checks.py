"""Checks and outputs of the LightningCLI commands, kept out of training_cli.py.

- Nothing reports success for work it did not do: an overlay config alone, a batch larger than
  the training split, or a fit that trained no step is refused or fails, never "Done".
- A library's refusal that is really a configuration error (Lightning's
  MisconfigurationException, wandb's UsageError) becomes one line with the fix.
- ``predict`` writes the posterior means, log-variances and labels it computed.
"""

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
    raise ConfigError(
        f"{', '.join(map(str, files))} only overlays a base config (it sets no trainer: no run folder, "
        f"checkpoints, figures or W&B): put the base first: --config {base} {names}")


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
    refuse it before any data is loaded, naming the split's size."""
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


def describe_library_error(err: Exception) -> str | None:
    """One line with the fix for a library error caused by the configuration, else None."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    text = " ".join(str(err).split())
    if isinstance(err, MisconfigurationException):
        if "gpu backend" in text or "accelerator is not available" in text:
            return (f"no GPU that torch can use on this machine ({text}): use "
                    "--trainer.accelerator=cpu, or auto to use a GPU only where there is one")
        key = re.search(r"`(\w+)`", text)
        where = f"--trainer.{key.group(1)}" if key else "the --trainer.KEY flag"
        return (f"Lightning refuses the trainer settings: {text.replace('`', '')} Fix {where} "
                "(or the trainer: section of the config)")
    if type(err).__module__.startswith("wandb") and type(err).__name__ == "UsageError":
        return (f"W&B refused to start: {text} Run `wandb login` (or set WANDB_API_KEY), or use "
                "WANDB_MODE=offline (upload later with `wandb sync`) or WANDB_MODE=disabled")
    return None
