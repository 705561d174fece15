"""Bring-your-own data (image_files.py, image_values.py): every documented format, written here with
Pillow and NumPy, reaches the networks as the grey levels the scaling rule says (docs/extending.md),
or is refused with a message naming the file and the fix; labels are class numbers 0..K-1."""

import numpy as np
import pytest
import torch
from PIL import Image

from consistency_vae import datasets
from consistency_vae.cli import cli_main
from consistency_vae.datamodule import MNISTDataModule
from consistency_vae.datasets import DatasetInfo, Loaded
from consistency_vae.errors import DataError
from consistency_vae.image_files import read_images
from consistency_vae.image_values import unit_float
from tests.cli_runs import BASE, csv_only

GREY8 = np.array([[0, 64], [128, 255]], np.uint8)
GREY16 = np.array([[0, 1000], [30000, 65535]], np.uint16)
UNIT = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
RGB = np.array([[[10, 20, 30], [200, 100, 50]], [[0, 255, 0], [255, 255, 255]]], np.uint8)
ALPHA = np.array([[255, 128], [0, 64]], np.uint8)
PALETTE = [10, 20, 30, 200, 100, 50, 0, 255, 0]  # colours 0, 1, 2
INDICES = np.array([[0, 1], [2, 1]], np.uint8)
COLOURS = np.array(PALETTE).reshape(3, 3)[INDICES]  # (H, W, 3): what the palette image shows


def folder(tmp_path, images: dict[str, list[Image.Image]], suffix: str = ".png", **save):
    """PATH/<class>/<i><suffix>, written by Pillow; returns PATH."""
    root = tmp_path / "images"
    for name, pictures in images.items():
        (root / name).mkdir(parents=True)
        for i, picture in enumerate(pictures):
            picture.save(root / name / f"{i}{suffix}", **save)
    return root


def pixels(path) -> torch.Tensor:
    """The first training image as the networks see it: (C, H, W) in [0, 1]."""
    return unit_float(read_images(str(path)).train[0])[0]


def palette_image(transparent: bool = False) -> Image.Image:
    image = Image.fromarray(INDICES, "P")
    image.putpalette(PALETTE)
    if transparent:
        image.info["transparency"] = 0  # colour 0 is see-through (a PNG tRNS chunk)
    return image


def over_black(rgb: np.ndarray, alpha: np.ndarray) -> torch.Tensor:
    """(H, W, C) colours composited over black, (C, H, W) in [0, 1]."""
    return torch.as_tensor(rgb * (alpha[..., None] / 255.0) / 255.0).permute(2, 0, 1).float()


# Pillow composites in 8-bit integers: one grey level of rounding.
GREY_LEVEL = 1 / 255

FOLDERS = {  # name: (image, suffix, the expected (C, H, W) in [0, 1], tolerance)
    "1-bit": (Image.fromarray(GREY8 > 100), ".png", torch.tensor([[[0.0, 0.0], [1.0, 1.0]]]), 0),
    "8-bit": (Image.fromarray(GREY8), ".png", torch.as_tensor(GREY8[None] / 255.0).float(), 0),
    "16-bit png": (Image.fromarray(GREY16), ".png", torch.as_tensor(GREY16[None] / 65535.0).float(),
                   1e-6),  # float32 division: one rounding
    "16-bit tiff": (Image.fromarray(GREY16), ".tif", torch.as_tensor(GREY16[None] / 65535.0).float(),
                    1e-6),
    "32-bit int tiff": (Image.fromarray(GREY16.astype(np.int32)), ".tif",
                        torch.as_tensor(GREY16[None] / 65535.0).float(), 1e-6),
    "float tiff": (Image.fromarray(UNIT), ".tif", torch.as_tensor(UNIT[None]), 0),
    "rgb": (Image.fromarray(RGB), ".png", torch.as_tensor(RGB / 255.0).permute(2, 0, 1).float(), 0),
    "rgba": (Image.fromarray(np.dstack([RGB, ALPHA])), ".png", over_black(RGB, ALPHA), GREY_LEVEL),
    "grey+alpha": (Image.fromarray(np.dstack([GREY8, ALPHA]), "LA"), ".png",
                   over_black(GREY8[..., None], ALPHA), GREY_LEVEL),
    "palette": (palette_image(), ".png", over_black(COLOURS, np.full((2, 2), 255)), 0),
    "palette+transparent": (palette_image(True), ".png",
                            over_black(COLOURS, np.where(INDICES == 0, 0, 255)), GREY_LEVEL),
}


@pytest.mark.parametrize("name", FOLDERS)
def test_a_folder_of_every_documented_format_is_scaled_by_the_rule(tmp_path, name):
    image, suffix, expected, tolerance = FOLDERS[name]
    path = folder(tmp_path, {"a": [image], "b": [image]}, suffix)
    torch.testing.assert_close(pixels(path), expected, rtol=0, atol=tolerance)


def test_a_folder_mixing_8_and_16_bit_images_scales_each_by_its_depth(tmp_path):
    path = folder(tmp_path, {"a": [Image.fromarray(GREY8)], "b": [Image.fromarray(GREY16)]})
    loaded = read_images(str(path))
    assert loaded.train[0].dtype == torch.float32  # 16-bit values keep their low bits
    expected = torch.as_tensor(np.stack([GREY8 / 255.0, GREY16 / 65535.0])[:, None]).float()
    torch.testing.assert_close(loaded.train[0], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("image", "match"), [
    (Image.fromarray(UNIT * 255), r"\.tif \(PIL mode F\): float pixels must lie in \[0, 1\], got min 0, "
                                  r"max 255: divide by 255"),
    (Image.fromarray(np.array([[0, 70000]], np.int32)), r"\.tif: a 32-bit integer image \(PIL mode I\) "
                                                         r"with values 0\.\.70000, outside 16 bits"),
], ids=["float 0-255", "int 0-70000"])
def test_an_image_out_of_range_is_refused_naming_the_file_and_the_fix(tmp_path, image, match):
    path = folder(tmp_path, {"a": [image]}, ".tif")
    with pytest.raises(DataError, match=match) as err:
        read_images(str(path))
    assert str(path / "a" / "0.tif") in str(err.value)


def test_a_16_bit_folder_reaches_the_data_module_in_unit_range(tmp_path):
    images = [Image.fromarray((GREY16 // (i + 1)).astype(np.uint16)) for i in range(10)]
    path = folder(tmp_path, {"a": images[:5], "b": images[5:]})
    dm = MNISTDataModule(dataset="images", path=str(path), val_size=2)
    dm.setup()
    every = torch.cat([dm.train_set.images, dm.val_set.images, dm.test_set.images])
    expected = torch.as_tensor(np.stack([GREY16 // (i + 1) for i in range(10)]) / 65535.0).float()
    assert every.dtype == torch.float32 and every.max() == 1.0  # 65535 / 65535: not clipped at 255
    torch.testing.assert_close(every.flatten(1).sort(0).values, expected.flatten(1).sort(0).values,
                               rtol=0, atol=1e-6)


# --- arrays: .npz and .pt -------------------------------------------------------------------------
def save_arrays(tmp_path, suffix: str, **arrays):
    path = tmp_path / f"data{suffix}"
    if suffix == ".npz":
        np.savez(path, **arrays)
    else:
        torch.save({k: torch.as_tensor(v) if v.dtype.kind != "U" else list(v) for k, v in arrays.items()},
                   path)
    return path


ARRAYS = {  # name: (images (N, H, W), expected in [0, 1])
    "uint8": (np.stack([GREY8] * 4), GREY8 / 255.0),
    "uint16": (np.stack([GREY16] * 4), GREY16 / 65535.0),
    "bool": (np.stack([GREY8 > 100] * 4), (GREY8 > 100).astype(float)),
    "float16": (np.stack([UNIT] * 4).astype(np.float16), UNIT),
    "float32": (np.stack([UNIT] * 4), UNIT),
    "float64": (np.stack([UNIT] * 4).astype(np.float64), UNIT),
}


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
@pytest.mark.parametrize("name", ARRAYS)
def test_arrays_of_every_documented_dtype_are_scaled_by_the_rule(tmp_path, suffix, name):
    images, expected = ARRAYS[name]
    path = save_arrays(tmp_path, suffix, images=images, labels=np.array([0, 1, 0, 1]))
    torch.testing.assert_close(pixels(path), torch.as_tensor(expected[None]).float(), rtol=0,
                               atol=1e-6)  # float32 division: one rounding


@pytest.mark.parametrize(("images", "match"), [
    (np.full((4, 2, 2), 200.0, np.float32), r"float pixels must lie in \[0, 1\], got min 200, max 200: "
                                            r"divide by 255"),
    (np.full((4, 2, 2), 4000.0), r"got min 4000, max 4000: divide by 65535"),
    (np.full((4, 2, 2), -1.0), r"got min -1, max -1: rescale to \[0, 1\] yourself"),
    (np.full((4, 2, 2), np.nan, np.float32), r"pixel 0 \(flat index\) is nan: .* replace the NaN"),
    (np.full((4, 2, 2), 7, np.int64), r"pixels of dtype int64 \(min 7, max 7\) have no known range: "
                                      r"store uint8 \(0-255\), uint16 \(0-65535\) or floats in \[0, 1\]"),
], ids=["float 0-255", "float 0-65535", "negative", "nan", "int64"])
@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_arrays_out_of_range_are_refused_naming_the_file_and_the_fix(tmp_path, suffix, images, match):
    path = save_arrays(tmp_path, suffix, images=images, labels=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match=f"^{path}: images: .*{match}"):
        read_images(str(path))


# --- labels -----------------------------------------------------------------------------------
def test_whole_float_labels_are_class_numbers(tmp_path):
    path = save_arrays(tmp_path, ".npz", images=np.zeros((3, 2, 2), np.uint8),
                       labels=np.array([0.0, 2.0, 1.0], np.float32))
    labels = read_images(str(path)).train[1]
    assert labels.dtype == torch.long and labels.tolist() == [0, 2, 1]


@pytest.mark.parametrize(("labels", "names", "match"), [
    ([0, 1.7, 1], ["a", "b"], r"labels: label 1\.7 at index 1 is not a class number: labels are "
                              r"whole numbers 0\.\.1 \(2 class names\); save them as integers"),
    ([0, -1, 1], ["a", "b"], r"labels: label -1 at index 1 is outside 0\.\.1 \(2 class names\): "
                             r"labels count classes from 0; renumber them"),
    ([0, 1, 2], ["a", "b"], r"labels: label 2 at index 2 is outside 0\.\.1 \(2 class names\)"
                            r".*or give one class name per class"),
    ([0, -3, 9], None, r"labels: label -3 at index 1 is outside 0 or more"),
], ids=["fractional", "negative", "past the names", "negative, no names"])
def test_labels_that_are_not_class_numbers_are_refused(tmp_path, labels, names, match):
    arrays = {"images": np.zeros((3, 2, 2), np.uint8), "labels": np.array(labels)}
    if names:
        arrays["class_names"] = np.array(names)
    path = save_arrays(tmp_path, ".npz", **arrays)
    with pytest.raises(DataError, match=f"^{path}: {match}"):
        read_images(str(path))


def test_test_labels_are_checked_against_the_same_class_names(tmp_path):
    path = save_arrays(tmp_path, ".npz", images=np.zeros((2, 2, 2), np.uint8), labels=np.array([0, 1]),
                       test_images=np.zeros((2, 2, 2), np.uint8), test_labels=np.array([1, 2]),
                       class_names=np.array(["a", "b"]))
    with pytest.raises(DataError, match=r"test_labels: label 2 at index 1 is outside 0\.\.1"):
        read_images(str(path))


def test_without_class_names_any_label_from_0_is_a_class(tmp_path):
    path = save_arrays(tmp_path, ".npz", images=np.zeros((3, 2, 2), np.uint8), labels=np.array([0, 7, 3]))
    assert read_images(str(path)).train[1].tolist() == [0, 7, 3]


# --- every path a user reaches: a registered load, the fit command ----------------------------
@pytest.fixture
def registered(monkeypatch):
    """Register a dataset whose ``load`` returns what the test gives, for this test only."""
    def register(images, labels, class_names=("a", "b")):
        info = DatasetInfo("mine", load=lambda path: Loaded((images, labels)), class_names=class_names)
        monkeypatch.setitem(datasets.DATASETS, "mine", info)
        monkeypatch.setitem(datasets.TITLES, "mine", "mine")

    return register


@pytest.mark.parametrize(("images", "labels", "match"), [
    (torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 2, 0]),
     r"^data\.dataset=mine: train labels: label 2 at index 2 is outside 0\.\.1 \(2 class names\)"),
    (torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([0.0, 0.5, 1.0, 0.0]),
     r"^data\.dataset=mine: train labels: label 0\.5 at index 1 is not a class number"),
    (torch.full((4, 1, 2, 2), 3.0), torch.tensor([0, 1, 0, 1]),
     r"^data\.dataset=mine: train images: float pixels must lie in \[0, 1\], got min 3, max 3"),
    (torch.zeros(4, 1, 2, 2, dtype=torch.int32), torch.tensor([0, 1, 0, 1]),
     r"^data\.dataset=mine: train images of dtype torch\.int32: return uint8 \(0-255\) or floats"),
], ids=["label past the names", "fractional label", "float pixels 0-3", "int32 pixels"])
def test_a_registered_load_is_checked_by_the_data_module_before_setup(registered, images, labels, match):
    registered(images, labels)
    dm = MNISTDataModule(dataset="mine")
    with pytest.raises(DataError, match=match):
        _ = dm.image_shape  # what the CLI's link reads when it builds the model: before any training


def test_fit_refuses_a_bad_file_in_one_line_before_any_run_folder(tmp_path, monkeypatch, capsys):
    path = save_arrays(tmp_path, ".npz", images=np.zeros((40, 4, 4), np.uint8),
                       labels=np.arange(40) % 3 - 1)  # -1, 0, 1: one too low
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", "--config", BASE, "--data.dataset=images", f"--data.path={path}",
                  "--data.batch_size=8", "--data.eval_batch_size=8", "--trainer.max_epochs=1",
                  "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false", csv_only()])
    message = str(exit_.value.code) + capsys.readouterr().err
    assert "Traceback" not in message
    assert message.strip().splitlines()[-1] == (
        f"consistency-vae: error: {path}: labels: label -1 at index 0 is outside 0 or more: labels "
        "count classes from 0; renumber them (np.unique(labels, return_inverse=True)[1])")
    assert not list(tmp_path.rglob("version_*"))


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_a_cut_off_or_foreign_array_file_is_refused_naming_it(tmp_path, suffix):
    # a truncated .npz once ended `predict --data.path` in zipfile's BadZipFile traceback
    path = save_arrays(tmp_path, suffix, images=np.zeros((4, 5, 5), np.uint8), labels=np.arange(4))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"{path.name} cannot be read as a \{suffix} file .* write it again"):
        read_images(path)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(DataError, match="holds a list, not a dict of arrays"):
        read_images(tmp_path / "list.pt")
