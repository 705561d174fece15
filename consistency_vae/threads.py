"""How many CPU threads a command computes with: one rule for every command that computes.

    --threads N  >  OMP_NUM_THREADS  >  1

torch otherwise takes one intra-op thread per core. This project's networks are small (a step of
the paper's 784-400-2 MLP is ~0.6 GFLOP): a second thread gains little on a quiet machine, and on a
busy one (another run, a test suite) the threads of each process wait on each other. Measured on a
2-core CPU with another job running, `make train` ran at 2.0-2.6 it/s with torch's default of 2
threads and 21-40 it/s with 1 (docs/scaling.md has this machine's figures). So the default is 1,
and a user's OMP_NUM_THREADS is honoured everywhere, the sweep runner's children included.
"""

import os

from consistency_vae.errors import ConfigError

ENV = "OMP_NUM_THREADS"
DEFAULT = 1
HELP = (f"CPU threads for torch; null: ${ENV} if set, else {DEFAULT} (more threads wait on each other on a "
        "busy machine).")


def resolve(requested: int | None = None) -> tuple[int, str]:
    """(threads, where the number came from): --threads, OMP_NUM_THREADS, or the default."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ConfigError(f"--threads must be a whole number >= 1, got {requested!r}: give a number of "
                              f"CPU threads, or leave it out ({ENV} if set, else {DEFAULT})")
        return requested, "--threads"
    value = os.environ.get(ENV, "").strip()
    if not value:
        return DEFAULT, "default"
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{ENV}={value!r} is not a number of threads >= 1: set it to e.g. 1, or unset it")
    return int(value), ENV


def apply(requested: int | None = None) -> int:
    """Set torch's intra-op threads by the rule above, for this process and the processes it starts
    (OMP_NUM_THREADS is set to the same number). Returns the number."""
    import torch

    threads, _ = resolve(requested)
    torch.set_num_threads(threads)
    os.environ[ENV] = str(threads)
    return threads
