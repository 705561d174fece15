"""`consistency-vae bench --pack N` (consistency_vae/packed/bench.py): user mistakes
in one line, its rates measured on real workers (short runs), on the CPU and, where there is one,
on a GPU."""

import json
import os
import subprocess
import sys

import pytest
import torch

from consistency_vae import bench
from consistency_vae.errors import ConfigError
from consistency_vae.packed import bench as packed_bench

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("argv", [["--pack", "0"], ["--pack=0"]])
def test_the_packed_bench_refuses_an_empty_pack_in_one_line(argv):
    assert packed_bench.asks_for_pack(argv) and not packed_bench.asks_for_pack(["--epochs", "1"])
    with pytest.raises(ConfigError, match="--pack 0: give the number of members per process"):
        packed_bench.main(argv)


def test_bench_with_pack_reaches_the_packed_bench():
    # consistency_vae/bench.py's hook; the solo bench's parser would end in SystemExit on --pack
    with pytest.raises(ConfigError, match="--pack 0: give the number of members per process"):
        bench.main(["--pack", "0"])


def test_bench_help_names_the_packed_bench_and_its_usage_its_own_flags(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    assert "With --pack N: packed training against solo instead" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        bench.main(["--pack", "2", "--help"])
    assert capsys.readouterr().out.startswith("usage: consistency-vae bench --pack PACK [--steps STEPS]")


def test_the_packed_bench_refuses_no_timed_steps():
    with pytest.raises(ConfigError, match="--steps 0: give at least 1 timed step"):
        packed_bench.main(["--pack", "2", "--steps", "0"])


@NO_CUDA
def test_accelerator_gpu_without_cuda_is_one_line_without_a_traceback():
    with pytest.raises(ConfigError, match="--accelerator gpu: no GPU that torch can use here: use "
                                          "--accelerator cpu"):
        bench.main(["--pack", "2", "--accelerator", "gpu"])
    cmd = [sys.executable, "-m", "consistency_vae", "bench", "--pack", "2", "--accelerator", "gpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "consistency-vae: error: --accelerator gpu: no GPU that torch can use here: use --accelerator cpu, "
        "or auto to use a GPU only where there is one"]


@NO_CUDA
def test_auto_is_the_cpu_without_cuda():
    assert packed_bench.resolve_accelerator("auto") == "cpu"
    assert packed_bench.resolve_accelerator("cpu") == "cpu"


def test_the_cpu_plan_is_unchanged_and_a_gpu_runs_one_process_per_side():
    # the CPU numbers of docs/scaling.md were measured with 2 processes, 3 warm-up steps, 300 solo
    # steps and 300 // N packed ones (at least 10): --accelerator cpu keeps them
    cpu = {"workers": 2, "warmup": 3, "solo_steps": 300, "pack_steps": 37}
    assert packed_bench.plan("cpu", 8, None) == cpu
    assert packed_bench.plan("cpu", 54, None)["pack_steps"] == 10
    assert packed_bench.plan("cpu", 8, 5) == {"workers": 2, "warmup": 3, "solo_steps": 5, "pack_steps": 5}
    gpu = packed_bench.plan("gpu", 54, None)
    assert gpu["workers"] == 1 and gpu["warmup"] > 3 and gpu["solo_steps"] == gpu["pack_steps"] == 300


def test_a_pack_worker_reports_model_steps_per_second(one_thread, data_dir):
    # n members * steps / seconds: 2 members of 2 steps on a 2-core machine is well above 0.1/s
    rate = packed_bench.pack_worker(str(data_dir), steps=2, n=2)
    assert 0.1 < rate < 1e5


@pytest.mark.slow  # ~30 s: four processes, each importing Lightning and loading MNIST
def test_accelerator_cpu_runs_two_processes_per_side_and_writes_its_numbers(data_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = packed_bench.main(["--pack", "2", "--steps", "3", "--accelerator", "cpu",
                                "--data_dir", str(data_dir), "--json", str(out)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == ("bench --pack 2: device=cpu, 2 processes at once, 1 thread each; "
                        "MLP 784-400-2, batch 128")
    assert json.loads(out.read_text()) == result
    assert result["device"] == "cpu" and result["workers"] == 2 and result["warmup"] == 3
    assert 0.1 < result["solo"] < 1e5 and 0.1 < result["packed"] < 1e5
    ratio = result["packed"] / result["solo"]
    assert result["ratio"] == pytest.approx(ratio, rel=1e-12)  # float64 on both sides, the same two numbers
    assert f"packed / solo: {result['ratio']:.2f}" in lines[-1]


@pytest.mark.gpu
@CUDA
def test_accelerator_gpu_times_one_process_per_side_on_the_gpu(mnist_dir, tmp_path, capsys):
    result = packed_bench.main(["--pack", "4", "--steps", "30", "--accelerator", "gpu",
                                "--data_dir", str(mnist_dir), "--json", str(tmp_path / "b.json")])
    header = capsys.readouterr().out.splitlines()[0]
    assert "device=cuda (" in header and "1 process per side" in header
    assert result["device"].startswith("cuda") and result["workers"] == 1
    assert result["solo"] > 1 and result["packed"] > 1


@pytest.mark.gpu
@CUDA
def test_gpu_workers_train_on_the_gpu(mnist_dir):
    assert packed_bench.solo_worker(str(mnist_dir), 5, "gpu", 2) > 1
    assert packed_bench.pack_worker(str(mnist_dir), 5, 3, "gpu", 2) > 1
