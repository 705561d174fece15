"""A pack restored from its members' checkpoints (packed/checkpoint.py writes them): for a pack
resumed after a kill, every member from the ``last.ckpt`` of the same epoch; the pack then ends
bit for bit where the unbroken pack ends (tests/test_packed_sweep.py, test_packed_checkpoint.py).
"""

import copy
from pathlib import Path

import torch

from consistency_vae import checkpointing, resume_state
from consistency_vae.errors import CheckpointError, ConfigError
from consistency_vae.packed.checkpoint import RULE
from consistency_vae.packed.fit import MemberResult
from consistency_vae.packed.step import Pack


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
    # a CUDA pack's Adam stays capturable (its step count loaded onto the device), its rate a tensor
    group = groups[0] | {"params": list(state), "capturable": pack.capturable}
    pack.optimizer.load_state_dict({"state": state, "param_groups": [group]})
    pack.set_lr(float(group["lr"]))


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
