"""Bring your own images: the ``images`` dataset, ``--data.dataset=images --data.path=PATH``.

PATH is one of:
- a folder ``PATH/train/<class>/*.png`` (any format PIL reads), with ``PATH/test/<class>/...``
  or without (then the data module holds a test split out of train), or ``PATH/<class>/*.png``
  (no test split). Class names are the sub-folder names, sorted; grey images (1-, 8-, 16-bit,
  float) stay grey (C = 1), any other mode (RGB, RGBA, palette) becomes RGB (C = 3), as the first
  image decides;
- an ``.npz`` file, or a ``.pt`` file holding a dict, with ``images`` uint8, uint16, bool or float
  (N, H, W), (N, H, W, C) or (N, C, H, W), C in {1, 3}, and ``labels`` (N,) integers; optionally
  ``test_images`` and ``test_labels``, and ``class_names`` (one per label).

Pixels become grey levels in [0, 1] and labels class numbers by one rule, image_values.py's; what
it cannot scale (float pixels outside [0, 1], int32 arrays, label 1.7 or -1) is refused here, when
the files are read, before any training. All images have one size (C, H, W), which reaches the
networks as ``model.image_shape``.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from consistency_vae.errors import DataError
from consistency_vae.image_values import check_unit_range, class_numbers, is_grey, pil_pixels, unit_array

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# What every dataset reader returns; defined here, below the registry (datasets.py re-exports
# both), so that this module needs nothing from the registry.
# Images uint8 (N, C, H, W) (grey levels 0..255) or float32 in [0, 1] (16-bit, float files).
Split = tuple[Tensor, Tensor]  # images (N, C, H, W), labels long (N,)


@dataclass(frozen=True)
class Loaded:
    """A dataset's images, as ``DatasetInfo.load`` returns them."""

    train: Split
    test: Split | None = None  # None: the data module holds a test split out of ``train``
    class_names: tuple[str, ...] | None = None


def read_images(path: str | None) -> Loaded:
    if not path:
        raise DataError("data.dataset=images reads your own images: give --data.path=FOLDER, or a "
                        ".npz/.pt file of images and labels (docs/extending.md)")
    where = Path(path)
    if where.is_dir():
        return _read_folder(where)
    if where.suffix in (".npz", ".pt") and where.is_file():
        return _read_arrays(where)
    raise DataError(f"data.path={path}: not a folder, nor an .npz or .pt file"
                    + ("" if where.exists() else " (it does not exist)"))


def check_loaded(loaded: Loaded, class_names: tuple[str, ...] | None, source: str) -> Loaded:
    """What any ``load`` returned, checked as the files are (the data module calls this for every
    ``load``, a registered one too): uint8 or float [0, 1] images, labels 0..K-1 (K class names)."""
    classes = len(class_names) if class_names else None
    splits = []
    for split, name in ((loaded.train, "train"), (loaded.test, "test")):
        if split is not None:
            images, labels = split
            if images.dtype != torch.uint8:
                if not images.is_floating_point():
                    raise DataError(f"{source}: {name} images of dtype {images.dtype}: return uint8 "
                                    "(0-255) or floats in [0, 1]")
                check_unit_range(images, f"{source}: {name} images")
            split = images, class_numbers(labels, f"{source}: {name} labels", classes)
        splits.append(split)
    return Loaded(*splits, loaded.class_names)


def _to_nchw(images, name: str, where: Path) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(unit_array(np.asarray(images), f"{where}: {name}")))
    if x.ndim == 3:
        x = x.unsqueeze(1)  # (N, H, W) grey
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"{where}: {name} must be (N, H, W), (N, H, W, C) or (N, C, H, W) with C in "
                        f"{{1, 3}}, got shape {tuple(np.shape(images))}")
    return x.contiguous()


def _split(data: dict, prefix: str, where: Path, classes: int | None) -> Split | None:
    if f"{prefix}images" not in data:
        return None
    images = _to_nchw(data[f"{prefix}images"], f"{prefix}images", where)
    if f"{prefix}labels" not in data:
        raise DataError(f"{where}: {prefix}images has no {prefix}labels beside it")
    labels = class_numbers(data[f"{prefix}labels"], f"{where}: {prefix}labels", classes)
    if len(labels) != len(images):
        raise DataError(f"{where}: {len(images)} {prefix}images but {len(labels)} {prefix}labels")
    return images, labels


def _read_arrays(where: Path) -> Loaded:
    try:
        if where.suffix == ".npz":
            with np.load(where, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
        else:
            data = torch.load(where, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - zipfile, pickle and torch each raise their own kind
        raise DataError(f"{where} cannot be read as a {where.suffix} file ({type(err).__name__}: {err}): "
                        "it may be cut off or of another kind; write it again (numpy.savez or torch.save "
                        "of a dict of arrays)") from None
    if not isinstance(data, dict):
        raise DataError(f"{where} holds a {type(data).__name__}, not a dict of arrays: save "
                        "{'images': ..., 'labels': ...} (see docs/extending.md)")
    if where.suffix != ".npz":
        data = {k: _numpy(v) for k, v in data.items()}
    names = tuple(str(n) for n in data["class_names"]) if "class_names" in data else None
    train = _split(data, "", where, len(names) if names else None)
    if train is None:
        raise DataError(f"{where}: no 'images' array (found {sorted(data)})")
    test = _split(data, "test_", where, len(names) if names else None)
    if test is not None and test[0].shape[1:] != train[0].shape[1:]:
        raise DataError(f"{where}: test_images are {tuple(test[0].shape[1:])}, images "
                        f"{tuple(train[0].shape[1:])}: one size for all")
    return Loaded(train, test, names)


def _numpy(value):
    if not isinstance(value, torch.Tensor):
        return value
    # numpy has no bfloat16; float32 holds every bfloat16 exactly
    return (value.float() if value.dtype == torch.bfloat16 else value).numpy()


def _read_folder(root: Path) -> Loaded:
    has_splits = (root / "train").is_dir()
    train_dir = root / "train" if has_splits else root
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"data.path={root}: no class folders in {train_dir} (expected "
                        f"{train_dir}/<class>/<image>.png)")
    mode: list[bool] = []  # the first image's decides: grey (C = 1) or colour (C = 3)
    train = _read_class_folders(train_dir, classes, mode)
    test = _read_class_folders(root / "test", classes, mode) if (root / "test").is_dir() else None
    return Loaded(train, test, tuple(classes))


def _read_class_folders(folder: Path, classes: list[str], mode: list[bool]) -> Split:
    from PIL import Image

    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for file in files:
            with Image.open(file) as img:
                if not mode:
                    mode.append(is_grey(img.mode))
                array = pil_pixels(img, mode[0], file)  # (H, W) or (H, W, 3), uint8 or float32
            if images and array.shape != images[0].shape:
                raise DataError(f"{file} is {array.shape}, the first image {images[0].shape}: all "
                                "images must have one size")
            images.append(array)
            labels.append(label)
    if not images:
        raise DataError(f"no images in the class folders of {folder}")
    if any(a.dtype != np.uint8 for a in images):  # 16-bit or float among them: all in [0, 1]
        images = [a if a.dtype == np.float32 else a.astype(np.float32) / 255 for a in images]
    return _to_nchw(np.stack(images), "images", folder), torch.tensor(labels)
