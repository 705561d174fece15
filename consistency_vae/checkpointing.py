"""Checkpoints that survive a kill, a preemption and a NaN, and are checked before use.

- ``AtomicModelCheckpoint``: Lightning's ModelCheckpoint, but each file is written next to its
  final name and moved into place with ``os.replace``. Lightning's own save goes through a temp
  file in the system temp folder and ``shutil.move``, which is a copy, not a rename, when that
  folder is on another file system (tmpfs, node-local disk): a kill during the copy leaves a
  truncated ``last.ckpt``. Here a kill at any moment leaves the previous ``last.ckpt`` whole.
- SIGTERM, what preemption sends: Lightning's signal connector already turns it into
  ``SIGTERMException`` at the next batch boundary; the callback then writes ``last.ckpt`` for the
  current step, so ``fit --ckpt_path last`` continues from there.
- No checkpoint of non-finite weights is ever written: the last good one stays in place.
- ``load_checkpoint``, ``read_cli_checkpoint`` and ``check_architecture``: a truncated file, a
  plain torch file, or a checkpoint of another architecture fails in one line before any data is
  loaded (``fit``/``test``... and ``evaluate`` share them).
"""

import inspect
import os
from pathlib import Path
from weakref import proxy

import torch
from lightning import LightningModule, Trainer
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from consistency_vae.errors import CheckpointError
from consistency_vae.guards import NonFiniteLossError

PARTIAL_SUFFIX = ".partial"  # a save in progress: never matched by ModelCheckpoint's *.ckpt lookups


class NonFiniteWeightsError(NonFiniteLossError):
    """A parameter became NaN or inf; no checkpoint of it is written."""


class AtomicModelCheckpoint(ModelCheckpoint):
    """ModelCheckpoint with atomic saves, a save on SIGTERM, and a refusal to save NaN weights.

    Takes ModelCheckpoint's arguments unchanged (``monitor``, ``save_last``, ``filename``...).
    """

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        check_finite_weights(trainer.lightning_module, self.last_model_path or self.best_model_path)
        if not _is_local_file_protocol(filepath):  # object stores have their own atomic puts
            return super()._save_checkpoint(trainer, filepath)
        partial = filepath + PARTIAL_SUFFIX
        trainer.save_checkpoint(partial, self.save_weights_only)  # every rank: it holds a barrier
        if trainer.is_global_zero:
            _fsync(partial)  # the bytes are on disk before the name points at them
            os.replace(partial, filepath)  # atomic on POSIX and Windows, same folder
            _fsync(os.path.dirname(filepath) or ".")
        trainer.strategy.barrier("AtomicModelCheckpoint")
        # The rest of ModelCheckpoint._save_checkpoint, after the file has its final name.
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_epoch(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_epoch(trainer)

    def _save_last_every_epoch(self, trainer: Trainer) -> None:
        """last.ckpt is the latest epoch, always. Lightning 2.6 rewrites it only at the steps where
        a top-k checkpoint is written, so it would hold the best epoch instead: resume would redo
        epochs, and "after 25 epochs" would evaluate an earlier one."""
        if (self.save_last and not self._should_skip_saving_checkpoint(trainer)
                and self._last_global_step_saved != trainer.global_step):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self._save_on_sigterm(trainer)
        elif isinstance(exception, NonFiniteLossError):
            kept = self.last_model_path or self.best_model_path or "none yet"
            rank_zero_warn(f"No checkpoint written for the non-finite state; the last good checkpoint "
                           f"is kept: {kept}")
        else:  # ModelCheckpoint(save_on_exception=True) keeps its library meaning
            super().on_exception(trainer, pl_module, exception)

    def _save_on_sigterm(self, trainer: Trainer) -> None:
        """Write last.ckpt for the current step (Lightning stops at a batch boundary, so it is whole)."""
        from lightning.pytorch.trainer.states import TrainerFn

        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking or trainer.fast_dev_run:
            return
        path = self.format_checkpoint_name(self._monitor_candidates(trainer), self.CHECKPOINT_NAME_LAST)
        if self._last_global_step_saved != trainer.global_step:  # else the last save is current
            self.last_model_path = path  # before saving: it is part of the callback's state
            self._save_checkpoint(trainer, path)
        rank_zero_info(f"SIGTERM at epoch {trainer.current_epoch}, global step {trainer.global_step}: "
                       f"checkpoint {self.last_model_path}. Resume with: fit ... --ckpt_path last")


def check_finite_weights(model: torch.nn.Module, kept: str = "") -> None:
    """Raise NonFiniteWeightsError naming the first bad parameters; one device sync in all."""
    params = dict(model.named_parameters())
    finite = torch.stack([p.detach().isfinite().all() for p in params.values()])
    if bool(finite.all()):
        return
    bad = [name for name, ok in zip(params, finite.tolist(), strict=True) if not ok]
    trainer = getattr(model, "_trainer", None)
    where = f"epoch {trainer.current_epoch}, global step {trainer.global_step}" if trainer else "now"
    raise NonFiniteWeightsError(
        f"non-finite weights at {where} in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}: "
        f"not writing a checkpoint of them; the last good checkpoint is kept ({kept or 'none yet'}). "
        "Lower model.lr, or resume from that checkpoint with --ckpt_path.")


PICKLE_HINT = "if you trust the file, pass --allow_pickle"  # evaluate's flag


def load_checkpoint(path: str | Path, allow_pickle: bool = False, pickle_hint: str = PICKLE_HINT) -> dict:
    """The checkpoint dict, loaded on the CPU, or a CheckpointError naming the path, what is wrong
    and the fix: a truncated, corrupted or non-Lightning file. ``allow_pickle=False`` loads as
    Lightning does with torch >= 2.6 (``weights_only``), so what passes here also loads there.
    ``pickle_hint`` says what to do with a file that only an unsafe (pickle) load can read."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as err:  # noqa: BLE001 - RuntimeError, UnpicklingError, EOFError...: all unusable
        raise CheckpointError(f"cannot read checkpoint {path}: "
                              f"{describe_load_failure(err, pickle_hint, path)}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "pytorch-lightning_version" not in ckpt:
        found = sorted(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a Lightning checkpoint (found {found}): give a .ckpt "
                              "written by `consistency-vae fit`")
    return ckpt


ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive (since torch 1.6); it starts so


def describe_load_failure(err: Exception, pickle_hint: str = PICKLE_HINT,
                          path: str | Path | None = None) -> str:
    """torch.load's multi-paragraph error -> one line: what is wrong and the fix. With ``path``,
    a file that does not start as a zip archive is "not a checkpoint at all" (a config, a log, a
    download's HTML page), told apart from a damaged (truncated or corrupted) checkpoint."""
    text = " ".join(str(err).split())
    if "Unsupported global" in text:  # a readable file that stores arbitrary Python objects
        what = text.split("Unsupported global:")[1].split(" was not")[0].strip()
        return f"it stores the Python object {what}, which safe loading refuses; {pickle_hint}"
    if path is not None and (head := _first_bytes(path)) is not None and not head.startswith(ZIP_MAGIC):
        shown = "is empty" if not head else f"starts with {head[:16]!r}"
        return (f"it is not a checkpoint at all (torch checkpoints are zip archives; this file "
                f"{shown}): give the path of a .ckpt file, e.g. RUN/checkpoints/last.ckpt")
    detail = text.split("WeightsUnpickler error:")[-1].split(" Check the documentation")[0].strip()
    detail = detail.split(". ")[0][:120]  # the first sentence; the rest is advice on weights_only
    return (f"a damaged checkpoint: the file is truncated or corrupted ({type(err).__name__}: "
            f"{detail}); copy it again, or use another checkpoint (e.g. last.ckpt)")


def _first_bytes(path: str | Path, n: int = 64) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return None


def read_cli_checkpoint(path: str | Path, model_class: type) -> dict:
    """The checkpoint of ``--ckpt_path``, read once (see ``load_checkpoint`` for unreadable files).
    Refuses hyperparameters that ``model_class`` does not take, which LightningCLI would next read
    into the config."""
    # LightningCLI itself reads the hyperparameters with weights_only=True, whatever the flags say
    ckpt = load_checkpoint(path, pickle_hint="the CLI loads checkpoints safely only: use one "
                           "written by `consistency-vae fit`")
    accepted = inspect.signature(model_class).parameters
    foreign = [k for k in ckpt.get("hyper_parameters", {}) if not k.startswith("_") and k not in accepted]
    if foreign:
        raise CheckpointError(
            f"--ckpt_path {path} holds the hyperparameters of another model ({', '.join(foreign[:3])} "
            f"are not arguments of {model_class.__name__}): pass a .ckpt written by `consistency-vae fit`")
    return ckpt


def check_architecture(path: str | Path, state: dict, model: torch.nn.Module) -> None:
    """Raise CheckpointError unless the checkpoint's tensors (``state``, its state_dict) are exactly
    ``model``'s, shape for shape."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = [f"{k} missing" for k in ours if k not in shapes]
    problems += [f"unexpected {k}" for k in shapes if k not in ours]
    problems += [f"{k} is {shapes[k]} there but {v} here" for k, v in ours.items() if shapes.get(k, v) != v]
    if problems:
        config = Path(path).resolve().parent.parent / "config.yaml"
        hint = f"--config {config}" if config.is_file() else "the config it was trained with"
        raise CheckpointError(
            f"--ckpt_path {path} holds another model than this config builds "
            f"({'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''}): run with {hint}")


def _fsync(path: str) -> None:
    """Flush a file's (or a folder's) data to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
