"""A dataset file's md5 is computed once and remembered (issue 21, section 2): every `make` target
and every run verified both datasets by md5 first, seconds to tens of seconds on a busy machine.
The memory is `.md5-verified.json` beside the files (size, mtime, ctime per verified file); a file
whose stat changed is hashed again, and refused if its bytes are wrong."""

import json
import os
import shutil

import pytest

from consistency_vae import data_files
from consistency_vae.errors import DataError


@pytest.fixture
def mnist_copy(tmp_path, data_dir):
    shutil.copytree(data_dir / "MNIST", tmp_path / "MNIST")  # with the original's cache, if any
    return tmp_path


@pytest.fixture
def hashed(monkeypatch):
    """The names of the files data_files hashes, in order."""
    names = []
    real = data_files.md5

    def counting(path):
        names.append(path.name)
        return real(path)

    monkeypatch.setattr(data_files, "md5", counting)
    return names


def test_a_verified_file_is_not_hashed_again(mnist_copy, hashed):
    data_files.verify(mnist_copy, "mnist")  # a copied folder: new ctimes, so the copied cache is stale
    assert sorted(hashed) == sorted(data_files.spec_for("mnist").md5)
    cache = json.loads((mnist_copy / "MNIST/raw" / data_files.VERIFIED).read_text())
    assert {k: v["md5"] for k, v in cache.items()} == data_files.spec_for("mnist").md5
    hashed.clear()
    data_files.verify(mnist_copy, "mnist")
    data_files.prepare_for_run(mnist_copy, "mnist")
    assert hashed == []


def test_a_touched_file_is_hashed_again_and_kept_if_good(mnist_copy, hashed):
    data_files.verify(mnist_copy, "mnist")
    path = mnist_copy / "MNIST/raw/t10k-labels-idx1-ubyte"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # same size, new mtime
    hashed.clear()
    data_files.verify(mnist_copy, "mnist")
    assert hashed == [path.name]


def test_a_corrupted_byte_is_refused_even_with_size_and_mtime_put_back(mnist_copy, hashed):
    """The cache must not vouch for a file rewritten in place (same size) whose mtime was restored
    (cp -p, touch -r): its ctime moved, so it is hashed and refused."""
    data_files.verify(mnist_copy, "mnist")
    path = mnist_copy / "MNIST/raw/t10k-labels-idx1-ubyte"
    st = path.stat()
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    hashed.clear()
    with pytest.raises(DataError, match="corrupted") as err:
        data_files.verify(mnist_copy, "mnist")
    assert str(path) in str(err.value) and hashed[-1] == path.name
    with pytest.raises(DataError, match="corrupted"):  # and again: a bad file is never remembered
        data_files.verify(mnist_copy, "mnist")


def test_an_unreadable_cache_means_hashing_not_an_error(mnist_copy, hashed):
    (mnist_copy / "MNIST/raw" / data_files.VERIFIED).write_text("{not json")
    data_files.verify(mnist_copy, "mnist")
    assert len(hashed) == 4
