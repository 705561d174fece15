"""One rule for CPU threads (issue 21, section 1): --threads > OMP_NUM_THREADS > 1, in every command."""

import pytest
import torch

from consistency_vae import threads
from consistency_vae.errors import ConfigError
from consistency_vae.training_cli import lightning_cli
from tests.cli_runs import BASE


@pytest.fixture(autouse=True)
def keep_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("requested, env, expected", [
    (None, None, (1, "default")),
    (None, "2", (2, "OMP_NUM_THREADS")),
    (3, "2", (3, "--threads")),
])
def test_the_rule(monkeypatch, requested, env, expected):
    if env is not None:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    assert threads.resolve(requested) == expected


@pytest.mark.parametrize("requested, env", [(0, None), (None, "two"), (None, "0")])
def test_a_bad_number_is_refused_naming_it(monkeypatch, requested, env):
    if env is not None:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    with pytest.raises(ConfigError, match="threads"):
        threads.resolve(requested)


@pytest.mark.parametrize("flags, env, expected", [([], None, 1), ([], "2", 2), (["--threads=2"], "1", 2)])
def test_fit_sets_torch_threads_by_the_rule(monkeypatch, data_dir, flags, env, expected):
    if env is not None:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    torch.set_num_threads(3)  # neither the default nor any case's answer
    lightning_cli(["--config", BASE, f"--data.data_dir={data_dir}", *flags], run=False)
    assert torch.get_num_threads() == expected
