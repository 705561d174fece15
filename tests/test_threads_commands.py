"""Every command that computes takes its CPU threads by threads.py's rule (issue 21, section 1):
--threads, else OMP_NUM_THREADS, else 1. fit/validate/test/predict: tests/test_threads.py; the
sweep runner: tests/test_sweep_threads.py; here evaluate, bench and reproduce, with the work
itself stubbed out (what is tested is the number each command sets, not the work)."""

import pytest
import torch

from consistency_vae import bench
from consistency_vae.errors import ConfigError
from consistency_vae.evaluation import evaluate
from consistency_vae.reproduction import reproduce


@pytest.fixture(autouse=True)
def keep_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(3)  # neither the default nor any case's answer
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("flags, env, expected", [([], None, 1), ([], "2", 2), (["--threads", "2"], "1", 2)])
def test_evaluate_sets_threads_by_the_rule(monkeypatch, tmp_path, flags, env, expected):
    if env is not None:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    seen = []

    def evaluate_checkpoint(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise SystemExit(0)  # the evaluation itself is tests/test_evaluate.py's

    monkeypatch.setattr(evaluate, "evaluate_checkpoint", evaluate_checkpoint)
    with pytest.raises(SystemExit):
        evaluate.main(["--ckpt_path", "x.ckpt", "--output", str(tmp_path), *flags])
    assert seen == [expected]


@pytest.mark.parametrize("flags, env, expected, source", [
    ([], None, 1, "default"), ([], "2", 2, "OMP_NUM_THREADS"), (["--threads", "2"], "1", 2, "--threads")])
def test_bench_sets_and_prints_its_threads(monkeypatch, capsys, data_dir, flags, env, expected, source):
    if env is not None:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    seen = []

    def timed(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return [1.0]

    monkeypatch.setattr(bench, "lightning_epochs", timed)
    monkeypatch.setattr(bench, "plain_epochs", timed)
    bench.main(["--epochs", "1", "--data_dir", str(data_dir), *flags])
    assert set(seen) == {expected}
    assert f"threads={expected} ({source})" in capsys.readouterr().out


def test_bench_refuses_a_bad_thread_count_before_any_work():
    with pytest.raises(ConfigError, match="--threads must be a whole number >= 1, got 0"):
        bench.main(["--threads", "0"])


def test_reproduce_gives_its_threads_to_the_runs(monkeypatch, tmp_path):
    calls = []

    def run_sweep(*args, **kwargs):
        calls.append(kwargs["threads"])
        return {"failed": 0}

    monkeypatch.setattr(reproduce, "run_sweep", run_sweep)
    monkeypatch.setattr(reproduce.data_files, "prepare", lambda *a: None)
    argv = ["--runs_dir", str(tmp_path / "runs"), "--output", str(tmp_path / "out"), "--seeds", "1",
            "--datasets", "mnist", "--threads", "2"]
    with pytest.raises(Exception, match="no finished run"):  # nothing trained: the stub ran nothing
        reproduce.main(argv)
    assert calls == [2] * len(reproduce.SWEEPS)
    monkeypatch.setenv("OMP_NUM_THREADS", "0")
    calls.clear()
    with pytest.raises(ConfigError, match="OMP_NUM_THREADS='0'"):  # before any run
        reproduce.main(argv[:-2])
    assert calls == []
