"""`consistency-vae evaluate`: metrics.json with every key, real PNGs, clear errors for bad files."""

import csv
import json
import math
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import lightning
import matplotlib.image
import pytest
import torch

from consistency_vae.cli import cli_main
from consistency_vae.errors import CheckpointError, UserError
from consistency_vae.evaluation.evaluate import METRIC_DOCS, evaluate_checkpoint
from consistency_vae.model import ConsistencyVAE
from tests.conftest import ROOT

KEYS = {"kl_consistency", "elbo", "recon", "kl", "iwae_ll", "iwae_gap", "active_units",
        "probe_accuracy", "alpha", "alpha_mode", "latent_dim", "dataset", "ckpt_path", "iwae_k"}
PNGS = ("latent_drift.png", "reconstructions.png", "prior_samples.png")
# quadrature_points 101: log p(x) on 1/16 of the default grid (seconds per evaluation), for tests of
# what evaluate writes; tests/test_quadrature.py checks the default grid's numbers
QUICK = {"iwae_k": 5, "iwae_images": 40, "progress": False, "quadrature_points": 101}


def assert_real_png(path: Path) -> None:
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4) and min(image.shape[:2]) > 200
    assert image[..., :3].std() > 0.05


def save_checkpoint(path: Path, data_dir, latent_dim: int = 2, hparams_dim: int | None = None) -> Path:
    """A Lightning-format ConsistencyVAE checkpoint (untrained), data config on a 300-image subset."""
    torch.manual_seed(0)
    model = ConsistencyVAE(latent_dim=latent_dim, alpha=0.5)
    torch.save({"state_dict": model.state_dict(), "epoch": 3,
                "pytorch-lightning_version": lightning.__version__,
                "hyper_parameters": {"latent_dim": hparams_dim or latent_dim, "alpha": 0.5},
                "datamodule_hyper_parameters": {"dataset": "mnist", "data_dir": str(data_dir),
                                                "subset": 300,  # as LightningCLI saves them:
                                                "_instantiator": "lightning.pytorch.cli.instantiate_module"}},
               path)
    return path


@pytest.fixture
def ckpt(tmp_path, mnist_dir) -> Path:
    return save_checkpoint(tmp_path / "model.ckpt", mnist_dir)


def test_writes_every_key_and_real_pngs(ckpt, tmp_path):
    out = tmp_path / "eval"
    results = evaluate_checkpoint(ckpt, out, **QUICK)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == results and KEYS <= saved.keys()
    assert saved["alpha"] == 0.5 and saved["latent_dim"] == 2 and saved["dataset"] == "mnist"
    assert saved["ckpt_epoch"] == 3  # the checkpoint's own epoch: a moved run folder still knows it
    assert saved["test_images"] == 300 and saved["iwae_images"] == 40 and saved["iwae_k"] == 5
    assert all(math.isfinite(saved[k]) for k in METRIC_DOCS)
    assert saved["elbo"] == pytest.approx(-(saved["recon"] + saved["kl"]), rel=1e-6)
    for name in PNGS:
        assert_real_png(out / name)
    # where the time went: every stage that ran, and nothing the wall clock did not see
    assert saved["timings"].keys() == {"load", *saved["metrics"], "figures"}
    assert all(t >= 0 for t in saved["timings"].values())
    assert sum(saved["timings"].values()) <= saved["wall_seconds"] + 0.05 * len(saved["timings"])


def test_never_overwrites_metrics_json_unless_asked(ckpt, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text("keep me")
    with pytest.raises(UserError, match="metrics.json exists: pass --overwrite"):
        evaluate_checkpoint(ckpt, out, **QUICK)
    assert (out / "metrics.json").read_text() == "keep me"
    evaluate_checkpoint(ckpt, out, overwrite=True, figures=False, **QUICK)
    assert "kl_consistency" in json.loads((out / "metrics.json").read_text())


def test_cli_prints_the_table_and_overrides_apply(ckpt, tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        cli_main(["evaluate", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "e"), "--threads", "1",
                  "--data.dataset", "fashion_mnist", "--iwae_k", "3", "--iwae_images", "20", "--no_figures",
                  "--quadrature_points", "101"])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "e" / "metrics.json").read_text())
    rows = {line.split()[0]: line for line in printed.splitlines()[1:] if line.startswith("  ")}
    for key in METRIC_DOCS:  # every key has its row, and a standard error is on its value's row
        if key.endswith("_se"):
            assert key not in rows and key.removesuffix("_se") in rows
        else:
            assert key in rows
    assert f"{saved['elbo']:.4f} ± {saved['elbo_se']:.2g}  " in rows["elbo"]
    assert f"{saved['active_units']} ± {saved['active_units_se']:.2g}  " in rows["active_units"]
    assert saved["dataset"] == "fashion_mnist" and saved["figures"] == [] and saved["cpu_threads"] == 1


def other_lightning_checkpoint(path: Path) -> None:
    torch.save({"state_dict": {"layer.weight": torch.zeros(2, 2)}, "hyper_parameters": {},
                "pytorch-lightning_version": lightning.__version__}, path)


@pytest.mark.parametrize("make, message", [
    (None, "does not exist"),
    (lambda p, ok: p.mkdir(), "does not exist or is not a file"),
    (lambda p, ok: p.write_bytes(ok.read_bytes()[: ok.stat().st_size // 2]), "truncated or corrupted"),
    (lambda p, ok: p.write_bytes(b"not a checkpoint at all"), "is not a checkpoint at all"),
    (lambda p, ok: torch.save({"weights": torch.zeros(3)}, p), "is not a Lightning checkpoint"),
    (lambda p, ok: torch.save(torch.zeros(3), p), "is not a Lightning checkpoint"),
    (lambda p, ok: torch.save({"state_dict": Fraction(1, 3)}, p), "if you trust the file, pass --allow"),
    (lambda p, ok: other_lightning_checkpoint(p), "Lightning checkpoint of another model"),
    (lambda p, ok: save_checkpoint(p, "data", latent_dim=2, hparams_dim=3), "cannot build ConsistencyVAE"),
], ids=["missing", "directory", "truncated", "garbage", "plain-dict", "tensor", "python-object",
        "other-class", "wrong-shapes"])
def test_bad_checkpoints_give_one_line_errors_naming_path_and_fix(ckpt, tmp_path, make, message):
    bad = tmp_path / "bad.ckpt"
    if make is not None:
        make(bad, ckpt)
    with pytest.raises(CheckpointError, match=message) as err:
        evaluate_checkpoint(bad, tmp_path / "out", **QUICK)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out" / "metrics.json").exists()
    with pytest.raises(SystemExit) as exit_:  # the CLI prints it on one line, no traceback
        cli_main(["evaluate", "--ckpt_path", str(bad), "--output", str(tmp_path / "out")])
    assert message in str(exit_.value.code) and "\n" not in str(exit_.value.code)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu_is_a_clear_error(ckpt, tmp_path):
    with pytest.raises(UserError, match="no CUDA device here; use --device cpu or auto"):
        evaluate_checkpoint(ckpt, tmp_path / "out", device="cuda", **QUICK)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_gives_the_cpu_numbers(ckpt, tmp_path):
    cpu = evaluate_checkpoint(ckpt, tmp_path / "cpu", device="cpu", figures=False, **QUICK)
    gpu = evaluate_checkpoint(ckpt, tmp_path / "gpu", device="cuda", figures=False, **QUICK)
    for key in ("kl_consistency", "elbo", "iwae_ll"):
        assert gpu[key] == pytest.approx(cpu[key], rel=1e-4)


# --- a real short training, then evaluate its checkpoint (slow) ---------------------------------
@contextmanager
def one_thread():
    """One torch thread: on a machine shared with other jobs, two threads waiting on each other
    made the small ops of this training 10x slower. The numbers checked do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_dir) -> Path:
    """`consistency-vae fit` on the default config: 2 epochs of 100 batches of real MNIST."""
    cwd = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as mp, one_thread():
        mp.chdir(cwd)
        cli_main(["fit", "--config", str(ROOT / "configs/mnist.yaml"), "--data.data_dir", str(data_dir),
                  "--trainer.max_epochs=2", "--trainer.limit_train_batches=100",
                  "--trainer.limit_val_batches=5", "--trainer.enable_progress_bar=false"])
    (run,) = (cwd / "runs").glob("mnist_alpha1.0_seed0/version_0")
    return run


@pytest.mark.slow
def test_fit_logs_the_test_curve_per_epoch_and_saves_the_scatter(trained_run):
    with open(trained_run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["test/kl_consistency"] and not r["test/loss"]]
    assert [int(r["epoch"]) for r in rows] == [0, 1]  # one row per epoch (test/loss: the final test)
    assert all(float(r["test/kl_consistency"]) > 0 and float(r["test/elbo"]) < 0 for r in rows)
    assert float(rows[1]["test/elbo"]) > float(rows[0]["test/elbo"])  # it learns
    for name in ("latent_drift", "reconstructions", "prior_samples"):
        assert_real_png(trained_run / "figures" / f"{name}_epoch02.png")  # after epoch 2 of 2


@pytest.mark.slow
def test_evaluate_a_trained_checkpoint(trained_run, tmp_path, capsys):
    out = tmp_path / "eval"
    with one_thread():
        # --quadrature_points 101: 1/16 of the default grid's time (about 40 s here on 10k images);
        # nothing below reads log p(x), and the grid's chunks hold as many images at any n
        cli_main(["evaluate", "--ckpt_path", str(trained_run / "checkpoints/last.ckpt"), "--output",
                  str(out), "--iwae_k", "100", "--iwae_images", "500", "--quadrature_points", "101"])
    assert "probe_accuracy" in capsys.readouterr().out
    saved = json.loads((out / "metrics.json").read_text())
    assert KEYS <= saved.keys() and saved["test_images"] == 10_000
    assert saved["quadrature_settings"]["points"] == 101 and math.isfinite(saved["log_likelihood"])
    for name in PNGS:
        assert_real_png(out / name)
    assert saved["iwae_gap"] > 0  # the K=100 bound is tighter than the ELBO
    assert saved["active_units"] == 2
    assert saved["probe_accuracy"] > 0.3  # chance is 0.1; a linear probe on 2-D means gets ~0.45 here
    # the same seeded test KL(z'||z) as the callback logged for the last epoch
    with open(trained_run / "metrics.csv") as f:
        logged = [float(r["test/kl_consistency"]) for r in csv.DictReader(f)
                  if r["test/kl_consistency"] and r["epoch"] == "1"]
    assert saved["kl_consistency"] == pytest.approx(logged[0], rel=1e-5)
