"""The shipped sweep files and the command wandb builds for them, shared by the sweep tests."""

from pathlib import Path

from consistency_vae.sweep.sweep_file import build_command, load_sweep, propose
from tests.conftest import ROOT

SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
ids = [p.name for p in SWEEPS]
TINY = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2", "--trainer.enable_progress_bar=false"]


def cli_args(sweep_file: Path, params: dict | None = None) -> list[str]:
    """The CLI arguments (after `python -m consistency_vae`) of one proposed run, built by wandb."""
    config = load_sweep(sweep_file)
    argv = build_command(config, params or propose(config, []))
    return argv[argv.index("consistency_vae") + 1:]
