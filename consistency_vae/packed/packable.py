"""What a pack trains as its members' solo runs would, and the refusal of everything else.

A pack runs its own loop (fit.py), not Lightning's. It honours the model, the data, ``max_epochs``,
the loggers (not W&B's upload of checkpoints) and the callbacks below, and writes each run folder's
files itself (member_run.py). A trainer setting, callback or logger option that it would not honour
is refused before any work, naming it and the fix, never dropped: a grid over
``trainer.gradient_clip_val`` would otherwise train the same run once per value, and each record
would claim a command that did not run.
"""

import inspect

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary, ProgressBar
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from consistency_vae import callbacks, run_start
from consistency_vae.curves import TrainingCurves
from consistency_vae.epoch_lines import EpochLines, ResumedEpochBar
from consistency_vae.errors import ConfigError
from consistency_vae.timing import EpochTimer

ALONE = "train this run alone (--pack 1)"
# Trainer settings that a pack honours, or that change nothing it trains or writes; any other one
# must keep Lightning's default (a profiler's report and model_registry's uploads, for two, are
# files and uploads that a pack does not make).
TRAINER_KEYS = frozenset({
    "max_epochs",  # the pack's epochs
    "default_root_dir", "logger",  # each member's run folder and W&B run
    "callbacks",  # checked one by one (CALLBACKS)
    "accelerator", "devices", "strategy", "num_nodes",  # checked as resolved: one device
    "enable_checkpointing",  # False: no ModelCheckpoint, so no checkpoints, as a solo run
    "log_every_n_steps",  # the per-step rows, which a pack does not write (member_run.py)
    "enable_progress_bar", "enable_model_summary", "num_sanity_val_steps",  # shown, not trained
    "enable_autolog_hparams",  # hparams.yaml: the pack's final trainer.test writes it, as a solo fit
    "deterministic", "benchmark", "inference_mode",  # the kernels' choice: rounding or speed only
    "sync_batchnorm", "use_distributed_sampler",  # one device: nothing to synchronise or shard
    "reload_dataloaders_every_n_epochs",  # the pack's batches are fixed tensors of the images
})
# Values that mean the default, written out
SAME_AS_DEFAULT = {"precision": ("32", "32-true", 32), "gradient_clip_val": (0, 0.0),
                   "fast_dev_run": (0, False), "max_steps": (-1,), "overfit_batches": (0, 0.0),
                   "accumulate_grad_batches": (1,), "check_val_every_n_epoch": (1,),
                   **{f"limit_{stage}_batches": (1, 1.0) for stage in ("train", "val", "test", "predict")}}
# The callbacks a pack calls (member_run.py, run.py) or that only show progress
CALLBACKS = (ModelCheckpoint, callbacks.TestSetConsistency, callbacks._FigureCallback, TrainingCurves,
             EpochTimer, SaveConfigCallback, run_start.RecordRunStart, ModelSummary, ProgressBar,
             EpochLines, ResumedEpochBar)
# ModelCheckpoint as a pack keeps it: one best by val/selection (lowest), and last.ckpt, every
# epoch. A step or time trigger sets _every_n_epochs to 0, so the triggers are checked before it.
CHECKPOINT = {"monitor": "val/selection", "mode": "min", "save_top_k": 1, "save_last": True,
              "_every_n_train_steps": 0, "_train_time_interval": None, "_every_n_epochs": 1}


def check(trainer: Trainer, config) -> None:
    """Refuse, naming it, what a pack would not honour of a member's ``trainer`` (built by its
    ``fit`` command line) and ``config`` (that command's config): a trainer setting, more than one
    device, a callback, W&B's upload of checkpoints."""
    settings = config["trainer"]
    for key, parameter in inspect.signature(Trainer.__init__).parameters.items():
        value, default = settings.get(key, parameter.default), parameter.default
        if key not in TRAINER_KEYS and value != default and value not in SAME_AS_DEFAULT.get(key, ()):
            raise ConfigError(f"trainer.{key}={value!r}: a pack would drop it and train as with "
                              f"Lightning's default ({default!r}): {ALONE}, or leave it out")
    if trainer.world_size > 1:
        raise ConfigError(f"trainer.devices x trainer.num_nodes = {trainer.world_size}: a pack trains on "
                          f"one device: {ALONE}")
    for callback in trainer.callbacks:
        _check_callback(callback)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._log_model:
            raise ConfigError(f"WandbLogger(log_model={logger._log_model!r}) (WANDB_LOG_MODEL in "
                              "configs/mnist.yaml): a pack writes its checkpoints itself and uploads none "
                              f"as W&B artifacts: {ALONE}, or leave log_model unset")


def _check_callback(callback: Callback) -> None:
    name = type(callback).__qualname__
    if not isinstance(callback, CALLBACKS):
        raise ConfigError(f"trainer.callbacks: a pack does not run {type(callback).__module__}.{name} (its "
                          f"loop calls only the project's own callbacks): {ALONE}, or drop the callback")
    if isinstance(callback, callbacks._FigureCallback) and callback.every_n_epochs:
        raise ConfigError(f"{name}(every_n_epochs={callback.every_n_epochs}): a pack draws figures at the "
                          f"end only: set every_n_epochs: 0, or {ALONE}")
    if isinstance(callback, ModelCheckpoint):
        check_checkpoint(callback)


def check_checkpoint(callback: ModelCheckpoint) -> None:
    """Refuse a ModelCheckpoint that keeps other than a pack keeps (CHECKPOINT); checkpoint.py's
    writer relies on it too (save_top_k 1: the best is also the k-th)."""
    for attr, kept in CHECKPOINT.items():
        if (value := getattr(callback, attr)) != kept:
            raise ConfigError(f"{type(callback).__qualname__}({attr.lstrip('_')}={value!r}): a pack keeps "
                              f"{attr.lstrip('_')}={kept!r} (one best by val/selection, and last.ckpt, "
                              f"every epoch): {ALONE}")
