"""Each member's checkpoint as its solo run writes it, and a pack restored from such checkpoints.

A member's ``last.ckpt`` and ``best-epochNN.ckpt`` must be accepted wherever a solo run's are:
``ConsistencyVAE.load_from_checkpoint``, ``evaluate``, ``test``, and ``fit --ckpt_path`` resume,
which continues the member alone exactly where its solo run would be. So ``member_checkpoint``
writes the dict that Lightning's ``dump_checkpoint`` builds at the end of an epoch (after
validation, where ModelCheckpoint saves), from the member's own solo objects where they hold the
structure (its model, datamodule and trainer, built by its LightningCLI and never fitted) and
from the pack where they hold its state (weights, alpha, the multiplier, Adam's moments, the
schedule). Its inverse, for a pack resumed after a kill, is ``restore.py``.

What a packed member cannot write, it refuses: the state of a stateful callback other than
ModelCheckpoint, a ModelCheckpoint that keeps other than a pack keeps (packable.py), a member that
failed (its solo run stopped at the failing step and wrote nothing after).
"""

import copy
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from consistency_vae import checkpointing
from consistency_vae.errors import ConfigError
from consistency_vae.model import ConsistencyVAE
from consistency_vae.packed import packable
from consistency_vae.packed.step import Pack

RULE = "multiplier"  # ConsistencyVAE.multiplier: its rule's buffers are saved under "multiplier.NAME"


def member_checkpoint(pack: Pack, i: int, model: ConsistencyVAE, datamodule: pl.LightningDataModule,
                      trainer: pl.Trainer, *, epoch: int, global_step: int, batches_per_epoch: int,
                      val_batches: int, best: dict) -> dict:
    """The checkpoint member ``i``'s solo run saves at the end of epoch ``epoch`` (0-based), after
    ``global_step`` optimizer steps, ``batches_per_epoch`` per epoch and ``val_batches`` in its
    validation. ``model``, ``datamodule``, ``trainer``: the member's, as its LightningCLI builds
    them; the model is given member i's weights (load_state_dict), nothing else is changed.

    ``best``: the member's ModelCheckpoint at this save, ``{"path": best_model_path, "score": its
    val/selection, "last_path": last_model_path}``; a solo run's last.ckpt has ``last_path`` =
    itself, its best-epochNN.ckpt the previous epoch's last.ckpt ("" at the first epoch), as
    ModelCheckpoint updates last_model_path after it saves the best."""
    if i in pack.failed:
        raise ValueError(f"member {i} ({pack.members[i].name()}) failed; its solo run writes no checkpoint "
                         f"after the failing step: {pack.failed[i]}")
    checkpoint = {
        "epoch": epoch,
        "global_step": global_step,
        "pytorch-lightning_version": pl.__version__,
        "state_dict": _weights(pack, i, model),
        "loops": _loops(trainer, epoch, global_step, batches_per_epoch, val_batches,
                        scheduled=pack.scheduler is not None),
        "callbacks": _callback_states(trainer, best),
        "optimizer_states": [_adam_state(pack, i, model)],
        # the solo's schedule is the pack's: the same steps, and one rate for all members
        "lr_schedulers": [] if pack.scheduler is None else [_as_solo(pack, pack.scheduler.state_dict())],
    }
    precision = trainer.precision_plugin  # as dump_checkpoint: 32-bit training adds nothing
    if precision_state := precision.state_dict():
        checkpoint[type(precision).__qualname__] = precision_state
    precision.on_save_checkpoint(checkpoint)
    for obj in (model, datamodule):  # as dump_checkpoint: hparams_name and hyper_parameters
        if obj is not None and obj.hparams:
            if hasattr(obj, "_hparams_name"):
                checkpoint[obj.CHECKPOINT_HYPER_PARAMS_NAME] = obj._hparams_name
            checkpoint[obj.CHECKPOINT_HYPER_PARAMS_KEY] = dict(obj.hparams)
    if datamodule is not None and (data_state := datamodule.state_dict()):
        checkpoint[type(datamodule).__qualname__] = data_state
    for callback in trainer.callbacks:
        callback.on_save_checkpoint(trainer, model, checkpoint)
    model.on_save_checkpoint(checkpoint)  # the initial alpha (resume_state.INITIAL_ALPHA)
    return checkpoint


class Writer:
    """Writes checkpoints in background threads while the pack trains on (a pack of 64 writes 128
    files an epoch; one after another, on the host, they would hold the device idle).

    ``submit(task)``: a callable that writes one member's files of one epoch, in order (the best
    checkpoint, the old best's removal, then last.ckpt, as ModelCheckpoint does). ``flush()``
    waits for every task so far and raises the first one's error (a full disk stops the pack):
    ``packed/run.py`` flushes before each epoch's checkpoints, so a member's files of two epochs
    are never written at once, and before anything reads them. Each file is written whole under a
    partial name and renamed (``save``), so a kill leaves every file whole, old or new."""

    def __init__(self, threads: int = 4):
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="pack-checkpoints")
        self.pending: list[Future] = []

    def submit(self, task: Callable[[], None]) -> None:
        self.pending.append(self.pool.submit(task))

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for future in pending:
            future.result()

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self.flush()
            else:  # already failing: let the writes in flight finish whole, keep the first error
                wait(self.pending)
        finally:
            self.pool.shutdown()


def save(checkpoint: dict, path: str | Path) -> None:
    """Write ``checkpoint`` to ``path`` as AtomicModelCheckpoint does: whole, under a partial name
    in the same folder, then renamed, so a kill leaves the previous file whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = f"{path}{checkpointing.PARTIAL_SUFFIX}"
    torch.save(checkpoint, partial)
    checkpointing._fsync(partial)
    os.replace(partial, path)
    checkpointing._fsync(str(path.parent))


# --- the checkpoint's parts ------------------------------------------------------------------------
def _weights(pack: Pack, i: int, model: ConsistencyVAE) -> dict:
    """The solo model's state_dict with member i's weights, alpha and constraint average, and, for
    a constrained member, its rule's state (the pack's rule holds one row per member). A fixed
    member's rule (if its config names one) never runs in its solo run: it keeps its initial state."""
    weights = pack.member_weights(i)
    if pack.rule is not None and pack.members[i].alpha_mode == "constrained":
        weights |= {f"{RULE}.{name}": (buf[i] if buf.dim() else buf).detach().clone()
                    for name, buf in pack.rule.named_buffers()}
    unexpected = model.load_state_dict(weights, strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"member {i}'s model has no {unexpected[:3]}: it is not the pack's architecture")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _loops(trainer: pl.Trainer, epoch: int, global_step: int, per_epoch: int, val_batches: int,
           scheduled: bool) -> dict:
    """Lightning's loop progress at ModelCheckpoint's save after epoch ``epoch``'s validation, as a
    solo run that trained without a break counts it. The structure is the trainer's own loops'
    state_dict, every counter reset; the counts are set here (the member's trainer never ran)."""
    loops = {name: _reset(getattr(trainer, name).state_dict())
             for name in ("fit_loop", "validate_loop", "test_loop", "predict_loop")}
    fit = loops["fit_loop"]
    _count(fit["epoch_progress"], epoch + 1, epoch + 1)
    fit["epoch_progress"]["total"]["completed"] = fit["epoch_progress"]["current"]["completed"] = epoch
    _count(fit["epoch_loop.batch_progress"], global_step, per_epoch, last=True)
    optimizer = fit["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]
    _count(optimizer["step"], global_step, per_epoch)
    _count(optimizer["zero_grad"], global_step, per_epoch)
    if scheduled:  # schedules.adam steps the schedule every optimizer step (interval "step")
        _count(fit["epoch_loop.scheduler_progress"], global_step, per_epoch)
    fit["epoch_loop.state_dict"]["_batches_that_stepped"] = global_step
    _count(fit["epoch_loop.val_loop.batch_progress"], val_batches, val_batches, last=True)
    # The training loader's state (datamodule.ResumableLoader.state_dict: the epoch, the batches
    # served), as Lightning's CombinedLoader lists it; written here, as the member's loader never ran.
    fit["state_dict"]["combined_loader"] = [{"epoch": epoch, "batches": per_epoch}]
    return loops


def _reset(state):
    """A loop's state_dict with every counter 0 and is_last_batch False (as before any run)."""
    if isinstance(state, dict):
        return {k: _reset(v) for k, v in state.items()}
    if isinstance(state, bool):
        return False
    return 0 if isinstance(state, int) else copy.deepcopy(state)


def _count(progress: dict, total: int, current: int, last: bool | None = None) -> None:
    """Set every counter (ready, started, processed, completed) of a progress's trackers."""
    for part, n in (("total", total), ("current", current)):
        progress[part] = dict.fromkeys(progress[part], n)
    if last is not None:
        progress["is_last_batch"] = last


def _callback_states(trainer: pl.Trainer, best: dict) -> dict:
    """{state_key: state} of the trainer's stateful callbacks, as Lightning collects them; the
    ModelCheckpoint's set from ``best`` on a copy (the member's own callback is left as it is)."""
    states = {}
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint):
            state = _model_checkpoint_state(callback, best)
        elif state := callback.state_dict():
            raise ConfigError(f"packed training cannot write the state of the callback {callback.state_key}: "
                              "train this run alone, or drop the callback from trainer.callbacks")
        if state:
            states[callback.state_key] = state
    return states


def _model_checkpoint_state(callback: ModelCheckpoint, best: dict) -> dict:
    """ModelCheckpoint's state after it kept ``best["path"]`` as its one best (save_top_k=1: the
    best is also the k-th, and its score the current one, which it sets only when it saves)."""
    packable.check_checkpoint(callback)  # checked when the pack starts; here for any other caller
    if callback.dirpath is None:
        raise ValueError("the member's ModelCheckpoint has no dirpath: set it to its run folder's "
                         "checkpoints/ (as fit's setup does) before writing its checkpoints")
    saved = copy.copy(callback)
    path, score = best.get("path") or "", best.get("score")
    if path and score is not None:
        score = torch.tensor(float(score))  # float32, as the logged val/selection; NaN counts as inf
        score = torch.tensor(float("inf")) if score.isnan() else score
        saved.best_model_path, saved.best_model_score, saved.current_score = path, score, score
        saved.best_k_models, saved.kth_best_model_path, saved.kth_value = {path: score}, path, score
    saved.last_model_path = best.get("last_path") or ""
    return saved.state_dict()


def _adam_state(pack: Pack, i: int, model: ConsistencyVAE) -> dict:
    """Member i's Adam state_dict, in the solo model's parameter order (configure_optimizers gives
    Adam ``self.parameters()``): its rows of the pack's moments, and the step count all share."""
    saved = pack.optimizer.state_dict()["param_groups"]
    group = _as_solo(pack, {k: v for k, v in saved[0].items() if k != "params"})
    names = [name for name, _ in model.named_parameters()]
    state = {}
    for j, name in enumerate(names):
        moments = pack.optimizer.state[pack.params[name]]
        # the step count: a CPU float tensor, as a solo Adam keeps it (a capturable one, on the device)
        state[j] = {k: (v.detach().to("cpu", torch.float32) if k == "step" else v[i].detach()).clone()
                    for k, v in moments.items()}
    return {"state": state, "param_groups": [group | {"params": list(range(len(names)))}]}


def _as_solo(pack: Pack, saved: dict) -> dict:
    """Adam's param group or the schedule's state_dict as a solo run saves them (a copy). A CUDA
    pack's Adam is capturable and holds its rates as float32 device tensors (step.Pack); a solo
    run's holds float64 numbers, and a resume compares ``initial_lr`` with model.lr exactly
    (resume_state.apply_lr): the rates are written from the host's numbers, not read back."""
    saved = copy.deepcopy(saved)
    if not pack.capturable:
        return saved
    lr = float(pack.hparams.lr)
    now = pack.scheduled_lr() if pack.scheduler is not None else lr
    solo = {"lr": now, "initial_lr": lr, "base_lrs": [lr], "_last_lr": [now], "capturable": False}
    return saved | {k: v for k, v in solo.items() if k in saved}


