"""What a loaded checkpoint's state gives way to, and what it keeps (``ConsistencyVAE.on_load_checkpoint``).

- Fixed mode: ``model.alpha`` is the weight, whatever the checkpoint's ``alpha`` buffer says (the key
  stays, so every checkpoint loads); a different value is said.
- Constrained mode: the multiplier is state and resumes. A new ``alpha`` would only be its initial
  value: it is not used, said, and the hyper-parameters keep the checkpoint's initial alpha (saved
  under ``INITIAL_ALPHA``, since ``load_from_checkpoint(p, alpha=5)`` writes 5 over the checkpoint's
  own hyper-parameters before the hook sees them).
- A resumed fit trains at ``model.lr``: the saved optimizer's rate is replaced (Lightning restores
  the optimizer from the same dict after the hook). A schedule's rates are fixed at its start, so
  under ``cosine`` a new rate is refused.
- A multiplier rule's own state that an older checkpoint lacks (NuPI's xi) starts fresh.
The command line refuses what cannot be honoured before this runs (``resume_flags``).
"""

import torch

from consistency_vae import guards
from consistency_vae.errors import ConfigError

INITIAL_ALPHA = "consistency_vae_initial_alpha"


def apply(module, checkpoint: dict, fitting: bool) -> None:
    """All of the above, on ``checkpoint`` (in place) and the module's hyper-parameters."""
    rule_state = module.multiplier.state_dict(prefix="multiplier.") if module.multiplier is not None else {}
    for key, value in rule_state.items():
        checkpoint.get("state_dict", {}).setdefault(key, value)
    apply_lr(module.hparams, checkpoint, fitting=fitting)
    apply_alpha(module.hparams, checkpoint)


def apply_alpha(hparams, checkpoint: dict) -> None:
    state = checkpoint.get("state_dict", {})
    if "alpha" not in state:
        return
    saved, wanted = float(state["alpha"]), float(hparams.alpha)
    if hparams.alpha_mode != "fixed":
        initial = checkpoint.get(INITIAL_ALPHA, (checkpoint.get("hyper_parameters") or {}).get("alpha"))
        if initial is not None and float(initial) != wanted:
            guards.say(f"consistency-vae: constrained mode continues the checkpoint's multiplier at "
                       f"alpha={saved:.4g}; model.alpha={wanted:g} would only be its initial value and is "
                       f"not used (hparams keep the checkpoint's initial alpha={float(initial):g})")
            hparams.alpha = float(initial)
        return
    # compared in the buffer's dtype: a float32 0.1 is not the float 0.1
    if saved != float(torch.tensor(wanted, dtype=state["alpha"].dtype)):
        guards.say(f"consistency-vae: the checkpoint was trained at alpha={saved:g}; this model uses "
                   f"model.alpha={wanted:g} (fixed mode: the hyper-parameter is the weight)")
    # on alpha's device: Lightning moves a loaded model to the device of its state's first tensor, alpha
    state["alpha"] = torch.full_like(state["alpha"], wanted)


def apply_lr(hparams, checkpoint: dict, fitting: bool) -> None:
    groups = [g for opt in checkpoint.get("optimizer_states") or [] for g in opt.get("param_groups", [])]
    if not groups or not fitting:
        return
    saved, wanted = groups[0].get("initial_lr", groups[0]["lr"]), float(hparams.lr)
    if saved == wanted:
        return
    if hparams.lr_schedule != "constant":
        raise ConfigError(f"the checkpoint's {hparams.lr_schedule} schedule started at lr={saved:g}, "
                          f"model.lr is {wanted:g}: a schedule's rates are fixed at its start; resume "
                          f"with model.lr={saved:g}, or start a new run")
    guards.say(f"consistency-vae: the checkpoint trained at lr={saved:g}; this run continues at "
               f"model.lr={wanted:g}")
    for group in groups:
        group["lr"] = wanted
