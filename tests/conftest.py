"""Shared fixtures: CPU, no network, real data fetched once into the repository's data/ folder."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")  # tests never talk to W&B's cloud
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "data"
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.fixture(autouse=True)
def no_inherited_wandb_service():
    """wandb.init puts its service's socket in os.environ (WANDB_SERVICE) for child processes to
    share. A later test's subprocess would inherit the service of an earlier test's run, which may
    be gone ("Failed to connect to service"): each test starts without one, as the sweep runner's
    children do."""
    os.environ.pop("WANDB_SERVICE", None)
    yield
    os.environ.pop("WANDB_SERVICE", None)
    # A W&B run that a test's in-process fit left open (lightning_cli called directly, not through
    # cli_main, which closes it) would become the next test's run: WandbLogger adopts wandb.run.
    # CI runs with WANDB_MODE=offline, so there such a run is real.
    # wandb.teardown() also drops the settings wandb cached at its first set-up (WANDB_MODE among
    # them), which a later test's monkeypatched WANDB_MODE would not otherwise reach.
    wandb = sys.modules.get("wandb")  # not imported by this fixture: most tests never load it
    if wandb is not None:
        if wandb.run is not None:
            wandb.finish()
        wandb.teardown()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real MNIST and Fashion-MNIST, verified (fetched on first use, as `make data` does)."""
    from consistency_vae import data_files

    for name in data_files.DATASETS:
        data_files.prepare(DATA_DIR, name)
    return DATA_DIR


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """MNIST alone, verified: for tests that need no other dataset (a GPU machine may carry only it)."""
    from consistency_vae import data_files

    data_files.prepare(DATA_DIR, "mnist")
    return DATA_DIR


@pytest.fixture
def run_cli(tmp_path, data_dir):
    """Run ``consistency-vae ARGS`` in-process, with outputs under tmp_path."""
    from consistency_vae.cli import cli_main

    def run(*args: str) -> None:
        cli_main([*args])

    return run


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models gain nothing from two, and lose much on a busy machine.
    A module asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def quick(tmp_path_factory, data_dir) -> dict:
    """The quick reproduction (tests/reproduce_quick.py), once for every module that reads it."""
    from tests.reproduce_quick import quick_reproduction

    return quick_reproduction(tmp_path_factory.mktemp("reproduce"), data_dir)
