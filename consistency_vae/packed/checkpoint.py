"""Each member's checkpoint as its solo run writes it, and a pack restored from such checkpoints.

A member's ``last.ckpt`` and ``best-epochNN.ckpt`` must be accepted wherever a solo run's are:
``ConsistencyVAE.load_from_checkpoint``, ``evaluate``, ``test``, and ``fit --ckpt_path`` resume,
which continues the member alone exactly where its solo run would be. So ``member_checkpoint``
writes the dict that Lightning's ``dump_checkpoint`` builds at the end of an epoch (after
validation, where ModelCheckpoint saves), from the member's own solo objects where they hold the
structure (its model, datamodule and trainer, built by its LightningCLI and never fitted) and
from the pack where they hold its state (weights, alpha, the multiplier, Adam's moments, the
schedule). ``restore_members`` is the inverse, for a pack resumed after a kill.

What a packed member cannot write, it refuses: the state of a stateful callback other than
ModelCheckpoint, a ModelCheckpoint that keeps more than the best (save_top_k != 1), a member that
failed (its solo run stopped at the failing step and wrote nothing after).
"""

import copy
import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from consistency_vae import checkpointing, resume_state
from consistency_vae.errors import CheckpointError, ConfigError
from consistency_vae.model import ConsistencyVAE
from consistency_vae.packed.fit import MemberResult
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
        "lr_schedulers": [] if pack.scheduler is None else [copy.deepcopy(pack.scheduler.state_dict())],
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


def resume_epoch(checkpoints: list[dict], names: list[str] | None = None) -> int:
    """The epoch (0-based) a pack of these members' checkpoints resumes at: the one after theirs,
    which must be the same end-of-epoch checkpoint for every member."""
    names = names or [f"member {i}" for i in range(len(checkpoints))]
    for name, ckpt in zip(names, checkpoints, strict=True):
        done = ckpt["loops"]["fit_loop"]["epoch_progress"]["total"]["processed"]
        if done != ckpt["epoch"] + 1:  # saved on SIGTERM, before the epoch's validation
            raise CheckpointError(f"{name}'s checkpoint was written mid-epoch (epoch {ckpt['epoch']}, global "
                                  f"step {ckpt['global_step']}): a pack resumes only from the end of an "
                                  "epoch; resume this member alone with `consistency-vae fit --ckpt_path`")
    epochs = [int(c["epoch"]) for c in checkpoints]
    if len(set(epochs)) > 1:
        ends = ", ".join(f"{name}: epoch {e}" for name, e in zip(names, epochs, strict=True))
        raise CheckpointError(f"the members of a pack resume from one epoch, but their checkpoints end "
                              f"different ones ({ends}): resume each epoch's members as their own pack")
    return epochs[0] + 1


def restore_members(pack: Pack, results: list[MemberResult], checkpoints: list[dict]) -> int:
    """Load each member's checkpoint (``checkpoints[i]`` for ``pack.members[i]``) into ``pack``:
    weights, alpha, constraint average, the multiplier's state, Adam's state (one step count for
    all) and the schedule's place; and into ``results[i]`` its best epoch, val/selection and
    weights, from the best checkpoint its ModelCheckpoint names (read from disk). Returns the
    epoch to train next (``resume_epoch``). ``results[i].epochs`` keeps only the epochs after it."""
    names = [m.name() for m in pack.members]
    if len(checkpoints) != len(pack.members):
        raise ValueError(f"{len(checkpoints)} checkpoints for a pack of {len(pack.members)} members")
    start = resume_epoch(checkpoints, names)
    for i, ckpt in enumerate(checkpoints):
        _check_member(pack, i, ckpt)
    with torch.no_grad():
        for i, ckpt in enumerate(checkpoints):
            state = ckpt["state_dict"]
            for name, param in pack.params.items():
                param[i].copy_(state[name])
            pack.alpha[i] = state["alpha"]
            pack.constraint_avg[i] = state["constraint_avg"]
        _restore_rule(pack, checkpoints)
    _restore_adam(pack, checkpoints, names)
    _restore_schedule(pack, checkpoints, names)
    for i, (result, ckpt) in enumerate(zip(results, checkpoints, strict=True)):
        _restore_best(pack, i, result, ckpt)
    return start


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
    if callback.save_top_k != 1:
        raise ConfigError(f"packed training keeps one best checkpoint; the ModelCheckpoint has save_top_k="
                          f"{callback.save_top_k}: set save_top_k: 1, or train this run alone")
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
    group = {k: copy.deepcopy(v) for k, v in saved[0].items() if k != "params"}
    names = [name for name, _ in model.named_parameters()]
    state = {}
    for j, name in enumerate(names):
        moments = pack.optimizer.state[pack.params[name]]
        state[j] = {k: (v if k == "step" else v[i]).detach().clone() for k, v in moments.items()}
    return {"state": state, "param_groups": [group | {"params": list(range(len(names)))}]}


# --- restoring a pack --------------------------------------------------------------------------------
def _check_member(pack: Pack, i: int, ckpt: dict) -> None:
    member, hp = pack.members[i], ckpt.get("hyper_parameters", {})
    saved = (hp.get("alpha_mode"), hp.get("kl_target"), hp.get("alpha"))
    if saved != (member.alpha_mode, member.kl_target, member.alpha):
        raise CheckpointError(f"checkpoint {i} is of alpha_mode={saved[0]} kl_target={saved[1]} "
                              f"alpha={saved[2]}, but pack member {i} is {member.name()}: give the members' "
                              "checkpoints in the pack's order")
    shapes = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    wrong = [k for k, p in pack.params.items() if shapes.get(k) != tuple(p.shape[1:])]
    if wrong:
        raise CheckpointError(f"checkpoint {i} ({member.name()}) holds another architecture than the pack "
                              f"({', '.join(wrong[:3])} differ or are missing): train it with its own config")


def _restore_rule(pack: Pack, checkpoints: list[dict]) -> None:
    """The constrained members' rows of the rule's state (it broadcasts to (N,) at its first update)."""
    if pack.rule is None:
        return
    n = len(pack.members)
    for name, buf in list(pack.rule.named_buffers()):
        rows = [i for i, c in enumerate(checkpoints)
                if pack.members[i].alpha_mode == "constrained" and f"{RULE}.{name}" in c["state_dict"]]
        if not rows:
            continue
        full = (buf.expand(n) if buf.dim() == 0 else buf).clone()
        for i in rows:
            full[i] = checkpoints[i]["state_dict"][f"{RULE}.{name}"]
        owner, _, attr = name.rpartition(".")
        setattr(pack.rule.get_submodule(owner), attr, full)


def _restore_adam(pack: Pack, checkpoints: list[dict], names: list[str]) -> None:
    """One Adam state over the stacked tensors: the members' moments stacked, their one step count."""
    groups = [{k: v for k, v in c["optimizer_states"][0]["param_groups"][0].items() if k != "params"}
              for c in checkpoints]
    steps = [float(c["optimizer_states"][0]["state"][0]["step"]) for c in checkpoints]
    for name, group, step in zip(names[1:], groups[1:], steps[1:], strict=True):
        if group != groups[0] or step != steps[0]:
            raise CheckpointError(f"{name}'s optimizer (step {step:g}, {group}) is not {names[0]}'s "
                                  f"(step {steps[0]:g}, {groups[0]}): a pack trains one optimizer; "
                                  "resume them apart")
    state = {}
    for j, (name, param) in enumerate(pack.params.items()):
        per_member = [c["optimizer_states"][0]["state"][j] for c in checkpoints]
        state[j] = {k: per_member[0][k].clone() if k == "step" else torch.stack([s[k] for s in per_member])
                    for k in per_member[0]}
        if state[j]["exp_avg"].shape != param.shape:
            raise CheckpointError(f"the checkpoints' Adam state of {name} is "
                                  f"{tuple(state[j]['exp_avg'].shape)}, the pack's parameter "
                                  f"{tuple(param.shape)}: not this architecture")
    # a resumed solo run trains at model.lr (or refuses a new rate under a schedule): the same here
    resume_state.apply_lr(pack.hparams, {"optimizer_states": [{"param_groups": [groups[0]]}]}, fitting=True)
    pack.optimizer.load_state_dict({"state": state, "param_groups": [groups[0] | {"params": list(state)}]})


def _restore_schedule(pack: Pack, checkpoints: list[dict], names: list[str]) -> None:
    schedules = [c.get("lr_schedulers") or [] for c in checkpoints]
    if pack.scheduler is None:
        if any(schedules):
            raise CheckpointError(f"{names[0]}'s checkpoint has a learning-rate schedule, the pack's model."
                                  "lr_schedule is constant: resume with the schedule it was trained with")
        return
    for name, schedule in zip(names, schedules, strict=True):
        if schedule != schedules[0] or len(schedule) != 1:
            raise CheckpointError(f"{name}'s learning-rate schedule {schedule} is not {names[0]}'s "
                                  f"{schedules[0]}: a pack trains on one schedule; resume them apart")
    planned, steps = schedules[0][0]["T_max"], pack.scheduler.T_max
    if planned != steps:  # as schedules.check_resumed_length
        raise ConfigError(f"the checkpoints' cosine learning-rate schedule spans {planned} optimizer steps, "
                          f"this pack {steps}: resume with the trainer.max_epochs it started with, or "
                          "start a new run")
    pack.scheduler.load_state_dict(copy.deepcopy(schedules[0][0]))


def _restore_best(pack: Pack, i: int, result: MemberResult, ckpt: dict) -> None:
    """The best epoch so far, from the ModelCheckpoint's state and the best checkpoint it names."""
    state = next((s for s in (ckpt.get("callbacks") or {}).values()
                  if isinstance(s, dict) and "best_model_path" in s), None)
    path = (state or {}).get("best_model_path")
    if not path:
        return
    if not Path(path).is_file():
        raise CheckpointError(f"{pack.members[i].name()}'s checkpoint names its best checkpoint {path}, "
                              "which does not exist: copy it back, or resume this member alone with "
                              "fit --ckpt_path")
    best = checkpointing.load_checkpoint(path)
    kept = pack.member_weights(i)
    result.best_epoch, result.best_selection = int(best["epoch"]), float(state["best_model_score"])
    result.best_weights = {k: best["state_dict"][k].to(v) for k, v in kept.items()}
