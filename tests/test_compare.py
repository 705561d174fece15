"""`consistency-vae compare A.ckpt B.ckpt`: the paper's Fig. 2 from two real checkpoints, as a
300-dpi PNG and a PDF, 7.2 inches wide; one scale in every zoomed panel of both rows; mistakes
as one line."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning import Trainer
from matplotlib.patches import Rectangle
from PIL import Image

from consistency_vae import callbacks, compare
from consistency_vae.datamodule import MNISTDataModule
from consistency_vae.model import ConsistencyVAE
from tests.cli_runs import ENV
from tests.conftest import ROOT
from tests.test_checkpoint_fixture import FIXTURE  # release 0.1's alpha = 1 checkpoint


@pytest.fixture(scope="module")
def plain_ckpt(tmp_path_factory, data_dir) -> Path:
    """A real plain-VAE checkpoint (alpha = 0): one short epoch on 300 real MNIST images."""
    root = tmp_path_factory.mktemp("plain")
    torch.manual_seed(0)
    trainer = Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1, accelerator="cpu",
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=root)
    dm = MNISTDataModule(data_dir=str(data_dir), subset=300, batch_size=50)
    trainer.fit(ConsistencyVAE(alpha=0.0), datamodule=dm)
    path = root / "run/version_0/checkpoints/last.ckpt"
    path.parent.mkdir(parents=True)
    trainer.save_checkpoint(path)
    return path


def pdf_page_inches(path: Path) -> tuple[float, float]:
    """The first MediaBox of a PDF, in inches (72 points each)."""
    box = re.search(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", path.read_bytes())
    return float(box[1]) / 72, float(box[2]) / 72


def test_compare_writes_a_300_dpi_png_and_a_pdf_from_two_checkpoints(plain_ckpt, data_dir, tmp_path):
    done = subprocess.run([sys.executable, "-m", "consistency_vae", "compare", str(plain_ckpt),
                           str(FIXTURE), "--output", str(tmp_path / "fig2"), "--data.data_dir",
                           str(data_dir), "--data.subset", "512", "--device", "cpu"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    png, pdf = tmp_path / "fig2/latent_drift_compare.png", tmp_path / "fig2/latent_drift_compare.pdf"
    assert f"wrote {png}, {pdf}" in done.stdout
    with Image.open(png) as image:
        dpi, (width, height) = image.info["dpi"], image.size
        pixels = torch.tensor(list(image.convert("L").getdata()), dtype=torch.float32)
    assert dpi == pytest.approx((300, 300), abs=0.1)  # pHYs stores dots per metre: 299.9994
    assert width == round(compare.WIDTH * 300) and height > 4 * 300  # print size, print resolution
    assert pixels.std() > 20  # a picture, not a blank page
    assert pdf.read_bytes()[:5] == b"%PDF-"
    w, h = pdf_page_inches(pdf)
    assert w == pytest.approx(compare.WIDTH, abs=0.01) and h == pytest.approx(height / 300, abs=0.01)


def test_both_rows_share_one_scale_and_say_what_each_model_is(plain_ckpt, data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), subset=512)
    dm.prepare_data()
    dm.setup("test")
    rows = []
    for path in (plain_ckpt, FIXTURE):
        model = ConsistencyVAE.load_from_checkpoint(path, map_location="cpu")
        with callbacks.eval_mode(model):
            data = callbacks.latent_drift_data(model, dm.test_set.images, dm.test_set.labels)
        rows.append((compare.model_words(model.hparams, float(model.alpha)), data))
    assert [r[0] for r in rows] == ["plain VAE (alpha = 0)", "consistency VAE (alpha = 1)"]
    fig = compare.compare_figure(rows, dm.class_names)
    widths = set()
    for sub in fig.subfigs:
        *panels, overview = sub.axes
        widths |= {round(ax.get_xlim()[1] - ax.get_xlim()[0], 9) for ax in panels}  # float64
        widths |= {round(ax.get_ylim()[1] - ax.get_ylim()[0], 9) for ax in panels}
        assert len([p for p in overview.patches if isinstance(p, Rectangle)]) == 3
        assert overview.get_legend() is None  # one class legend, under both rows
    assert len(widths) == 1 and len(fig.legends) == 1


def test_source_words_count_epochs_from_one():
    path = Path("runs/mnist_alpha0.0_seed0/version_0/checkpoints/last.ckpt")
    assert compare.source_words(path, 25) == "mnist_alpha0.0_seed0/version_0/last.ckpt, after epoch 25"
    assert compare.source_words(Path("x.ckpt"), None) == "x.ckpt"


def _fails_in_one_line(*args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "consistency_vae", "compare", *args], cwd=cwd,
                          env={**ENV, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("consistency-vae: error: ")
    return line


def test_mistakes_are_one_line(plain_ckpt, tmp_path):
    line = _fails_in_one_line(str(tmp_path / "missing.ckpt"), str(FIXTURE), "--output", "out",
                              cwd=tmp_path)
    assert "missing.ckpt does not exist" in line and "--ckpt_path" not in line  # no such flag here
    other = torch.load(plain_ckpt, map_location="cpu", weights_only=False)
    other["datamodule_hyper_parameters"]["dataset"] = "fashion_mnist"
    torch.save(other, tmp_path / "fashion.ckpt")  # a checkpoint of another dataset
    line = _fails_in_one_line(str(plain_ckpt), str(tmp_path / "fashion.ckpt"), "--output", "out",
                              cwd=tmp_path)
    assert "mnist" in line and "fashion_mnist" in line and "--data.dataset" in line
    line = _fails_in_one_line(str(plain_ckpt), str(FIXTURE), "--output", "out", "--dpi", "20",
                              cwd=tmp_path)
    assert "--dpi 20" in line
    assert not (tmp_path / "out").exists()  # refused before any work


def synthetic_drift(n: int, seed: int) -> dict:
    """latent_drift_data's keys for n images of n classes, from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    all_mu = torch.randn(1000, 2, generator=g)
    mu = all_mu[:n]
    return {"mu": mu, "logvar": torch.full((n, 2), -3.0), "mu_prime": mu + 0.1,
            "logvar_prime": torch.full((n, 2), -3.5), "kl_consistency": torch.rand(n, generator=g),
            "labels": torch.arange(n), "all_mu": all_mu, "all_labels": torch.arange(1000) % 10,
            "dims": (0, 1), "how": "", "images": torch.rand(n, 28, 28, generator=g),
            "images_prime": torch.rand(n, 28, 28, generator=g)}


@pytest.mark.parametrize("n", [3, 10])
def test_no_text_of_the_print_figure_runs_into_another_or_off_the_page(n):
    """--one_per_class at 7.2 inches once printed its ten panel titles over each other."""
    rows = [("plain VAE (alpha = 0): mnist_alpha0.0_seed0/version_0/last.ckpt, after epoch 25",
             synthetic_drift(n, 0)), ("consistency VAE (alpha = 1): mnist_alpha1.0_seed0/version_0/"
                                      "last.ckpt, after epoch 25", synthetic_drift(n, 1))]
    fig = compare.compare_figure(rows)
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)  # constrained layout places everything
    texts = [fig._suptitle, *(sub._suptitle for sub in fig.subfigs)]
    texts += [ax.title for sub in fig.subfigs for ax in sub.axes]
    boxes = [t.get_window_extent(renderer) for t in texts if t.get_text()]
    assert len(boxes) == 3 + 2 * (n + 1)
    for i, box in enumerate(boxes):
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1
        for other in boxes[i + 1:]:
            assert not box.overlaps(other), (texts[i].get_text(), box, other)
