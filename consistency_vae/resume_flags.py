"""What a resume (``fit --ckpt_path``) may change, and what it refuses to.

LightningCLI reads the checkpoint's hyper-parameters over the command line's, silently: once,
``--ckpt_path X --model.latent_dim=16`` trained the 2-D model of X in a folder named ``z16``, and
``--model.lr=1e-4`` went on at 1e-3. Here each ``model.*`` and ``data.*`` key that the command line
sets differently from the checkpoint is either honoured (the config's value is put back, and the run
folder, ``config.yaml`` and ``hparams.yaml`` say it) or refused in one line before any work; a
checkpoint's value is never kept in place of a user's without a word.

Honoured: what no saved state fixes. The loss's weights and targets, and the learning rate, which
the model writes into the resumed optimizer (``resume_state``, which also says so, as it does for
a fixed alpha); where the same images are, and how evaluation batches them.
Refused: the shapes and the program (networks, latent size, mode, schedule, divergence, multiplier
rule), and which images train and validate and in what batches (dataset, split, subset, batch size,
binarisation, seed): a resumed epoch skips the batches it already trained on, and the best
checkpoint so far was chosen on the same validation images.
"""

from pathlib import Path

import yaml
from jsonargparse import Namespace

from consistency_vae import datasets
from consistency_vae.errors import ConfigError, UserError

HONOURED_MODEL = ("alpha", "kl_target", "alpha_lr", "constraint_ema", "consistency_grad_through_decoder",
                  "lr")
HONOURED_DATA = ("data_dir", "eval_batch_size", "on_device", "predict_split")
SAID_BY_THE_MODEL = ("alpha", "lr")  # resume_state reports these itself (also outside the CLI)
IGNORED = ("image_shape",)  # the data's, linked to the model; check_architecture compares shapes


def _plain(value):
    if isinstance(value, Namespace):
        return value.as_dict()
    return list(value) if isinstance(value, tuple) else value


def changes(asked: dict, saved: dict, prefix: str) -> list[tuple[str, object, object]]:
    """(key, checkpoint's value, asked value) for each key both have and disagree on."""
    out = []
    for key, value in saved.items():
        if key.startswith("_") or key in IGNORED or key not in asked:
            continue
        if _plain(asked[key]) != _plain(value):
            out.append((f"{prefix}.{key}", _plain(value), _plain(asked[key])))
    return out


def check(ckpt_path: str, asked: Namespace, loaded_model: Namespace, checkpoint: dict) -> list[str]:
    """Refuse what a resume cannot honour; put back in ``loaded_model`` (in place) what it can.

    ``asked``: the fit config before Lightning read the checkpoint's hyper-parameters into it;
    ``loaded_model``: its ``model`` node after. Returns the lines to print for honoured changes that
    the model does not report itself."""
    asked_model = asked.model.as_dict()
    found = changes(asked_model, loaded_model.as_dict(), "model")
    found += changes(_with_val_size(asked.data.as_dict()),
                     _with_val_size(checkpoint.get("datamodule_hyper_parameters") or {}), "data")
    seed = _seed_of(ckpt_path)
    if seed is not None and asked.get("seed_everything") != seed:
        found.append(("seed_everything", seed, asked.get("seed_everything")))
    honoured = {f"model.{k}" for k in HONOURED_MODEL} | {f"data.{k}" for k in HONOURED_DATA}
    if asked_model.get("alpha_mode") == "constrained":  # alpha is state there: the multiplier resumes
        honoured.discard("model.alpha")
    if asked_model.get("lr_schedule", "constant") != "constant":  # a schedule's rates are fixed at its start
        honoured.discard("model.lr")
    refused = [c for c in found if c[0] not in honoured]
    if refused:
        what = ", ".join(f"{key}={new} (the checkpoint's: {old})" for key, old, new in refused)
        hint = _constrained_alpha_hint(refused, checkpoint)
        raise ConfigError(
            f"--ckpt_path {ckpt_path} cannot resume with {what}: a resume continues the checkpoint's "
            f"model on its images{hint}. Give the checkpoint's values (its run folder's config.yaml "
            "has them), or start a new run without --ckpt_path")
    lines = []
    for key, old, new in found:
        section, name = key.split(".", 1)
        if section == "model":
            setattr(loaded_model, name, asked_model[name])
        if not (section == "model" and name in SAID_BY_THE_MODEL):
            lines.append(f"consistency-vae: resuming with {key}={new} (the checkpoint's: {old})")
    return lines


def _constrained_alpha_hint(refused: list, checkpoint: dict) -> str:
    if not any(key == "model.alpha" for key, _, _ in refused):
        return ""
    alpha = (checkpoint.get("state_dict") or {}).get("alpha")
    now = f" (alpha={float(alpha):.4g} now)" if alpha is not None else ""
    return (f"; in constrained mode model.alpha is only the multiplier's initial value, and a resume "
            f"continues the checkpoint's multiplier{now}")


def _with_val_size(data: dict) -> dict:
    """val_size None is the dataset's own, which older checkpoints wrote out (10000 for MNIST)."""
    if "val_size" not in data or data["val_size"] is not None:
        return data
    try:
        return {**data, "val_size": datasets.get_dataset(data.get("dataset", "mnist")).val_size}
    except UserError:  # an unknown name fails later, with its own message
        return data


def _seed_of(ckpt_path: str) -> int | None:
    """seed_everything of the run folder's config.yaml (the checkpoint does not hold it), if there."""
    config = Path(ckpt_path).resolve().parent.parent / "config.yaml"
    try:
        seed = (yaml.safe_load(config.read_text()) or {}).get("seed_everything")
    except (OSError, yaml.YAMLError):
        return None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None
