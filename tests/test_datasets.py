"""The dataset registry (datasets.py) and "bring your own images" (image_files.py): a non-28x28
dataset, written here, trains through the CLI with the MLP and the conv net, its shape reaching
the networks through the CLI's link (data.image_shape -> model.image_shape)."""

from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from consistency_vae import callbacks, datasets
from consistency_vae.datamodule import MNISTDataModule
from consistency_vae.errors import ConfigError, DataError
from consistency_vae.model import ConsistencyVAE
from tests.cli_runs import BASE, csv_only

CONV = str(BASE).replace("mnist.yaml", "conv.yaml")


def stripes(n: int, shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 images (n, C, H, W) of 3 classes: a bright vertical band whose place is the class."""
    g = np.random.default_rng(seed)
    c, h, w = shape
    labels = g.integers(0, 3, n)
    images = g.integers(0, 40, (n, c, h, w)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, label % c, :, label * w // 3:(label + 1) * w // 3] = 220
    return images, labels


def test_registry_lists_the_builtins_and_names_the_choices():
    assert {"mnist", "fashion_mnist", "images"} <= set(datasets.list_datasets())
    mnist = datasets.get_dataset("mnist")
    assert mnist.image_shape == (1, 28, 28) and mnist.split_sizes == {"train": 60_000, "test": 10_000}
    assert MNISTDataModule(dataset="fashion_mnist").class_names[9] == "Boot"
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'.*fashion_mnist"):
        MNISTDataModule(dataset="cifar")


def test_registry_shape_is_the_files_shape(data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), subset=8)
    dm.setup()
    assert dm.image_shape == tuple(dm.train_set.images.shape[1:]) == (1, 28, 28)
    assert dm.split_sizes() == {"train": 50_000, "val": 10_000, "test": 10_000}


def fit(run_cli, tmp_path, monkeypatch, path, *extra):
    monkeypatch.chdir(tmp_path)
    run_cli("fit", "--config", BASE, *extra, "--data.dataset=images", f"--data.path={path}",
            "--data.batch_size=32", "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false",
            csv_only())
    (ckpt,) = tmp_path.glob("runs/*/version_0/checkpoints/last.ckpt")
    return ConsistencyVAE.load_from_checkpoint(ckpt), torch.load(ckpt, weights_only=True)


@pytest.mark.parametrize("networks", [[], ["--config", CONV]], ids=["mlp", "conv"])
def test_npz_of_rgb_images_trains_through_the_cli(run_cli, tmp_path, monkeypatch, networks):
    images, labels = stripes(240, (3, 20, 26))  # colour, not square, not a multiple of 4
    test_images, test_labels = stripes(60, (3, 20, 26), seed=1)
    path = tmp_path / "stripes.npz"
    np.savez(path, images=images.transpose(0, 2, 3, 1), labels=labels,  # (N, H, W, C) on disk
             test_images=test_images, test_labels=test_labels, class_names=np.array(["a", "b", "c"]))
    model, ckpt = fit(run_cli, tmp_path, monkeypatch, path, *networks)
    assert tuple(model.hparams.image_shape) == (3, 20, 26)  # linked from the data, saved, reloaded
    x = torch.as_tensor(test_images[:5]).float() / 255
    out = model(x)
    assert out["x_prime"].shape == (5, 3, 20, 26) and torch.isfinite(out["loss"]).all()
    assert ckpt["datamodule_hyper_parameters"]["path"] == str(path)
    assert out["elbo"].mean() > -20 * 26 * 3 * np.log(2)  # it learnt: above the untrained 0.69/pixel


def test_folder_of_grey_pngs_without_test_split_trains_with_the_conv_net(run_cli, tmp_path,
                                                                        monkeypatch):
    images, labels = stripes(150, (1, 30, 18))
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = tmp_path / "pngs" / "abc"[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(folder / f"{i}.png")
    model, ckpt = fit(run_cli, tmp_path, monkeypatch, tmp_path / "pngs", "--config", CONV)
    assert tuple(model.hparams.image_shape) == (1, 30, 18)
    dm = MNISTDataModule(dataset="images", path=str(tmp_path / "pngs"))
    dm.setup()
    assert dm.class_names == ("a", "b", "c")
    assert dm.split_sizes() == {"train": 120, "val": 15, "test": 15}  # a tenth each held out
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 150
    legends = []  # the latent-drift figure names the classes by their folders, not 0, 1, 2

    def log_figure(trainer, name, fig, epoch):  # read before the callback clears the figure
        legends.append([t.get_text() for t in fig.axes[-1].get_legend().get_texts()])

    with mock.patch.object(callbacks, "log_figure", log_figure):
        callbacks.LatentScatter().draw(SimpleNamespace(datamodule=dm, max_epochs=1), model, epoch=1)
    assert len(legends) == 1 and legends[0][:3] == ["a", "b", "c"]


def test_pt_file_and_refusals(tmp_path):
    images, labels = stripes(40, (1, 12, 12))
    torch.save({"images": torch.as_tensor(images), "labels": torch.as_tensor(labels)}, tmp_path / "a.pt")
    dm = MNISTDataModule(dataset="images", path=str(tmp_path / "a.pt"), val_size=5)
    assert dm.image_shape == (1, 12, 12)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (30, 5, 5)
    np.savez(tmp_path / "float.npz", images=images.astype(np.float32), labels=labels)
    with pytest.raises(DataError, match=r"images: float pixels must lie in \[0, 1\], got min 0, max 220: "
                                        "divide by 255"):  # every format: tests/test_image_files.py
        _ = MNISTDataModule(dataset="images", path=str(tmp_path / "float.npz")).image_shape
    with pytest.raises(DataError, match="--data.path"):
        _ = MNISTDataModule(dataset="images").image_shape
    with pytest.raises(ConfigError, match="val_size=20 leaves no training images"):
        MNISTDataModule(dataset="images", path=str(tmp_path / "a.pt"), val_size=20).setup()


@pytest.mark.parametrize("subset", [0, -4])
def test_a_subset_below_1_is_refused_not_read_as_all_the_images(subset):
    """images[:0 or None] was all of them, and images[:-4] all but the last 4: silently."""
    with pytest.raises(ConfigError, match=rf"data.subset must be >= 1 .*got {subset}: leave it out"):
        MNISTDataModule(subset=subset)
