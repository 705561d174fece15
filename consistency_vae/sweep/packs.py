"""Which grid points train together as a pack (``consistency-vae sweep --pack N``), and the pack's
command.

Points pack together when they differ only in values that keep the tensor shapes and the program
(``PER_MEMBER``: the seed, alpha, the alpha mode and kl_target; consistency_vae/packed/); any other
value (the dataset, latent_dim, networks, batch size, epochs, learning rate and its schedule, the
divergence or multiplier rule) puts a point into another pack. Points whose earlier attempt is to
be resumed pack with each other, never with fresh ones. ``--pack 1`` is the solo path, one process
per run; ``auto`` packs where the benchmark says it pays: on a GPU (docs/scaling.md). On the 2-core
CPU two packs of 8 or more trained 0.75-0.81 of the model-steps per second of two solo processes
(``bench --pack``: a step of this MLP is arithmetic there, not launches), so ``auto`` stays solo.
"""

import json
import sys
from pathlib import Path

from consistency_vae.errors import ConfigError

PER_MEMBER = ("seed_everything", "model.alpha", "model.alpha_mode", "model.kl_target")
AUTO_GPU_PACK = 64  # members per pack on a GPU: the reproduction's largest group has 40 (docs/scaling.md)


def resolve(pack: str | int) -> int:
    """``--pack``: a number >= 1, or ``auto`` (AUTO_GPU_PACK on a GPU, 1 on a CPU)."""
    if str(pack) == "auto":
        import torch  # only for auto: `sweep --help` and `--pack N` stay light

        return AUTO_GPU_PACK if torch.cuda.is_available() else 1
    try:
        n = int(pack)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"--pack {pack}: give a number of runs per process >= 1 (1: a process per run, "
                          "as without --pack) or auto")
    return n


def group(params: dict) -> tuple:
    """The packs a grid point may join: its values but the per-member ones (the runner also keeps
    points that resume apart from fresh ones)."""
    return tuple(sorted((k, json.dumps(v)) for k, v in params.items() if k not in PER_MEMBER))


def member_argv(command: list[str]) -> list[str]:
    """A solo run's command line after ``fit``: what the pack's process builds the member from."""
    if "fit" not in command:
        raise ConfigError(f"--pack trains `fit` commands; this sweep's command is {' '.join(command)}")
    return command[command.index("fit") + 1:]


def pack_command(spec: Path) -> list[str]:
    """The pack's process: this Python, the project's pack entry point, the spec file."""
    return [sys.executable, "-m", "consistency_vae.packed.run", str(spec)]


def write_spec(path: Path, runs: list[dict]) -> Path:
    """The pack's SPEC.json (consistency_vae/packed/run.py): each member's argv and run-info path."""
    members = [{"argv": member_argv(r["command"]), "run_info": str(Path(r["log"]).with_suffix(".json")),
                "id": r["id"]} for r in runs]
    path.write_text(json.dumps({"members": members}, indent=1))
    return path
