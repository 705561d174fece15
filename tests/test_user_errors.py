"""Every project command ends a user mistake with one `consistency-vae: error:` line on stderr,
exit code 1 and no traceback (cli.py catches the UserError family for all of them, as for `fit`).

Each case runs the command as a real subprocess under a timeout, with a real bad input: a
corrupted IDX file, a malformed YAML file, a file where a folder goes, a damaged checkpoint.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from consistency_vae import data_files
from tests.cli_runs import ENV
from tests.conftest import ROOT

FIXTURE_CKPT = ROOT / "tests/fixtures/mnist_alpha1_hidden32_v0.1.ckpt"
TIMEOUT_S = 120  # an error comes before any work: seconds of imports on a busy machine


def run(cwd: Path, *args: str) -> tuple[int, str, str]:
    """``python -m consistency_vae ARGS`` in cwd: (exit code, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", "consistency_vae", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    return done.returncode, done.stdout, done.stderr


def one_error_line(code: int, out: str, err: str) -> str:
    """The one `consistency-vae: error:` line, after checking exit code, stderr and traceback."""
    assert code == 1, (code, out, err)
    assert "Traceback" not in out + err, err
    lines = [line for line in err.splitlines() if line.startswith("consistency-vae: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def corrupt_mnist(folder: Path) -> Path:
    """A data folder with MNIST's four IDX files, one of them overwritten with garbage."""
    raw = data_files.raw_dir(folder, "mnist")
    raw.mkdir(parents=True)
    source = data_files.prepare(ROOT / "data", "mnist")
    for name in data_files.spec_for("mnist").md5:
        (raw / name).symlink_to(source / name)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"not an IDX file")
    return folder


def run_folder_with_bad_config(root: Path) -> Path:
    """A run folder as fit writes it, but with a config.yaml cut off mid-list."""
    folder = root / "mnist_alpha1.0_seed0/version_0"
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURE_CKPT, folder / "checkpoints/last.ckpt")
    (folder / "config.yaml").write_text("model:\n  alpha: [1.0,\n")
    (folder / "metrics.csv").write_text("epoch,test/elbo\n0,-150.0\n")
    return root


def test_data_with_a_corrupted_file(tmp_path, mnist_dir):
    corrupt_mnist(tmp_path / "data")
    line = one_error_line(*run(tmp_path, "data", "--dataset", "mnist", "--data_dir", "data"))
    assert "t10k-labels-idx1-ubyte" in line and "corrupted" in line and "consistency-vae data" in line


def test_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "data").write_text("")
    line = one_error_line(*run(tmp_path, "data", "--dataset", "mnist", "--data_dir", "data"))
    assert "--data_dir data must be a folder" in line


@pytest.mark.parametrize("args, says", [
    (["--output", "taken"], "--output taken is a file, not a folder"),
    (["--output", "out", "--metrics", "no_such_module.metric"],
     "--metrics no_such_module.metric: no module 'no_such_module' to import"),
    (["--output", "out", "--device", "tpu9"], "--device tpu9: not a device"),
    (["--output", "out", "--mi_batch", "0"], "--mi_batch 0: each must be >= 1"),
    (["--output", "out", "--quadrature_points", "1"], "--quadrature_points 1: give at least 2 grid points"),
], ids=["output-is-a-file", "metrics-module-missing", "unknown-device", "zero-count", "one-grid-point"])
def test_evaluate(tmp_path, mnist_dir, args, says):
    (tmp_path / "taken").write_text("")
    line = one_error_line(*run(tmp_path, "evaluate", "--ckpt_path", str(FIXTURE_CKPT), *args,
                               "--data.data_dir", str(mnist_dir), "--data.subset", "100",
                               "--iwae_k", "2", "--no_figures"))
    assert says in line
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.parametrize("content, says", [
    ("method: grid\nparameters: {model.alpha: {values: [0, 1]\n", "is not valid YAML at line"),
    ("- method\n- grid\n", "holds a YAML list, not a mapping"),
], ids=["malformed", "a-list"])
def test_sweep_with_a_bad_sweep_file(tmp_path, content, says):
    (tmp_path / "bad.yaml").write_text(content)
    line = one_error_line(*run(tmp_path, "sweep", "bad.yaml", "--list"))
    assert "bad.yaml" in line and says in line


def test_sweep_runs_dir_that_is_a_file(tmp_path):
    (tmp_path / "runs").write_text("")
    line = one_error_line(*run(tmp_path, "sweep", str(ROOT / "sweeps/alpha_mnist.yaml"), "--list"))
    assert "--runs_dir runs is a file, not a folder" in line


@pytest.mark.parametrize("file", [True, False], ids=["a-file", "missing"])
def test_sweep_report_runs_folder_that_is_a_file_or_missing(tmp_path, file):
    if file:
        (tmp_path / "runs").write_text("")
    line = one_error_line(*run(tmp_path, "sweep-report", "runs"))
    said = "is a file, not a folder" if file else "does not exist"
    assert f"runs folder runs {said}: give the --runs_dir" in line


def test_sweep_report_with_a_malformed_config_yaml(tmp_path):
    run_folder_with_bad_config(tmp_path / "runs")
    line = one_error_line(*run(tmp_path, "sweep-report", "runs", "--output", "report"))
    assert "runs/mnist_alpha1.0_seed0/version_0/config.yaml is not valid YAML" in line


@pytest.mark.parametrize("args, says", [
    ([], "config.yaml is not valid YAML"),
    (["--csv", "no/such/folder/runs.csv"], "--csv no/such/folder/runs.csv: cannot write it"),
], ids=["malformed-config", "csv-in-a-missing-folder"])
def test_runs(tmp_path, args, says):
    root = tmp_path / "runs"
    if args:
        root.mkdir()
    else:
        run_folder_with_bad_config(root)
    line = one_error_line(*run(tmp_path, "runs", "runs", *args))
    assert says in line


def test_predict_with_a_damaged_checkpoint(tmp_path, mnist_dir):
    damaged = tmp_path / "cut.ckpt"
    damaged.write_bytes(FIXTURE_CKPT.read_bytes()[:5000])
    line = one_error_line(*run(tmp_path, "predict", "--config", str(ROOT / "configs/mnist.yaml"),
                               "--data.data_dir", str(mnist_dir), "--ckpt_path", str(damaged)))
    assert "cut.ckpt" in line and "damaged checkpoint" in line


def test_reproduce_from_runs_with_a_malformed_config_yaml(tmp_path):
    run_folder_with_bad_config(tmp_path / "gathered")
    line = one_error_line(*run(tmp_path, "reproduce", "--from-runs", "gathered", "--output", "results"))
    assert "gathered/mnist_alpha1.0_seed0/version_0/config.yaml is not valid YAML" in line
    assert not (tmp_path / "results").exists()


def test_reproduce_from_runs_with_a_damaged_checkpoint(tmp_path):
    # the evaluation comes after the checks: its CheckpointError was a traceback
    folder = run_folder_with_bad_config(tmp_path / "gathered") / "mnist_alpha1.0_seed0/version_0"
    config = {"model": {"latent_dim": 2, "alpha": 1.0}, "data": {"dataset": "mnist"},
              "seed_everything": 0, "trainer": {"max_epochs": 1}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "checkpoints/last.ckpt").write_bytes(b"PK\x03\x04 a cut-off zip")
    line = one_error_line(*run(tmp_path, "reproduce", "--from-runs", "gathered", "--output", "results"))
    assert "last.ckpt" in line


@pytest.mark.parametrize("args, says", [
    ([], "MNIST file corrupted"),
    (["--epochs", "0"], "--epochs 0: give at least 1 timed epoch"),
], ids=["corrupted-data", "zero-epochs"])
def test_bench(tmp_path, mnist_dir, args, says):
    corrupt_mnist(tmp_path / "data")
    line = one_error_line(*run(tmp_path, "bench", "--data_dir", "data", *args))
    assert says in line


@pytest.mark.slow
@pytest.mark.parametrize("command, split", [("validate", "val"), ("test", "test")])
def test_validate_and_test_refuse_a_limit_that_leaves_a_rank_no_batch(tmp_path, mnist_dir, command, split):
    # 300 images in 3 batches of 100 on 2 gloo ranks: 2 and 1, halved to 1 and int(0.5) = 0. Only the
    # rank with none refused, and the other died waiting for it (a gloo traceback); now both refuse
    # before any work, with the same line
    ckpt = shutil.copy(FIXTURE_CKPT, tmp_path / "last.ckpt")  # evaluating writes beside the checkpoint
    line = one_error_line(*run(tmp_path, command, "--config", str(ROOT / "configs/mnist.yaml"),
                               f"--data.data_dir={mnist_dir}", "--data.subset=300",
                               "--data.eval_batch_size=100", f"--trainer.limit_{split}_batches=0.5",
                               "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
                               "--ckpt_path", str(ckpt), "--model.encoder.init_args.hidden_dims=[32]",
                               "--model.decoder.init_args.hidden_dims=[32]"))
    assert f"--trainer.limit_{split}_batches=0.5" in line
    assert not (ROOT / "tests/fixtures/validate").exists() and not (ROOT / "tests/fixtures/test").exists()


@pytest.mark.parametrize("command", [["sweep", "sweeps/alpha_mnist.yaml"], ["reproduce"]])
def test_a_bad_pack_size_stops_before_any_run(tmp_path, command):
    """--pack 0: one line naming it, before a run folder or a sweep record is written."""
    shutil.copytree(ROOT / "sweeps", tmp_path / "sweeps")
    line = one_error_line(*run(tmp_path, *command, "--pack", "0", "--runs_dir", "runs"))
    assert "--pack 0: give a number of runs per process >= 1" in line
    assert not (tmp_path / "runs").exists()
