"""One LightningDataModule for every registered dataset (datasets.py: MNIST, Fashion-MNIST, your
own images), served from tensors held in memory.

The whole dataset is one float tensor in [0, 1] (MNIST: 60k x 784 x 4 bytes = 188 MB), moved to the
training device in ``setup``. A batch is one indexing operation on that tensor: no per-sample
PIL conversion, no collate of 128 small tensors, no host-to-device copy per step on a GPU.
"""

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from consistency_vae import data_files, datasets, image_files
from consistency_vae.errors import ConfigError
from consistency_vae.image_values import unit_float
from consistency_vae.networks import ImageShape
from consistency_vae.noise import BINARIZE, seeded_generator


class InMemoryImages(Dataset):
    """(images, labels) tensors; ``__getitems__`` returns a whole batch with one gather."""

    def __init__(self, images: Tensor, labels: Tensor):
        self.images, self.labels = images, labels  # (N, C, H, W) float, (N,) long

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, device=self.labels.device)
        return self.images[idx], self.labels[idx]


def _whole_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return batch  # __getitems__ already built the batch


class ResumableLoader(DataLoader):
    """A training loader that a mid-epoch checkpoint (SIGTERM) resumes exactly.

    Lightning saves ``state_dict()``, the epoch and how many batches of it were served, and on
    resume calls ``load_state_dict``: the next pass over that same epoch (the sampler's order is
    a function of the epoch) then skips the batches already trained on. Without this, Lightning
    restarts the epoch's order and trains on its first batches twice.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._served = 0  # batches of the current epoch handed out so far
        self._resume: dict | None = None  # {"epoch", "batches"} from a checkpoint

    def __iter__(self):
        # A generator: this runs at the first batch, after Lightning's set_epoch.
        epoch = self.sampler.epoch
        skip = self._resume["batches"] if self._resume and self._resume["epoch"] == epoch else 0
        self._resume, self._served = None, skip
        batches = super().__iter__()
        for _ in range(skip):
            next(batches)
        for batch in batches:
            self._served += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches": self._served}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state


class UnpaddedDistributedSampler(DistributedSampler):
    """Shards evaluation data across ranks without padding, so no test image counts twice.

    DistributedSampler pads every rank to the same length by repeating indices; for metrics
    that are dataset means that would weight the repeated images twice. Whole batches of
    ``batch_size`` are dealt round-robin (global batch b goes to rank b % num_replicas), so every
    batch holds the same images as on one process: with noise drawn per global batch (see
    ``ConsistencyVAE._eval_step``), test metrics do not depend on the number of processes.
    Being a DistributedSampler, Lightning keeps it under DDP instead of injecting its own.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, batch_size: int = 1):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        n = len(dataset)
        starts = range(rank * batch_size, n, num_replicas * batch_size)
        self.indices = [i for s in starts for i in range(s, min(s + batch_size, n))]
        self.num_samples = len(self.indices)

    def __iter__(self):
        return iter(self.indices)


def check_eval_batches(images: int, batch_size: int, processes: int, split: str) -> None:
    """Refuse, on every rank and before any training, an evaluation split with fewer batches than
    processes: a rank without a batch never joins the metrics' sync at the epoch's end, and the
    others wait for it forever. (Smaller batches would work, but the evaluation noise is drawn per
    global batch, so the metrics would no longer equal one process's.)"""
    if -(-images // batch_size) >= processes:
        return
    # ceil(images / b) >= processes  <=>  b <= (images - 1) // (processes - 1)
    fix = (f"use --data.eval_batch_size <= {(images - 1) // (processes - 1)}, or fewer processes"
           if images >= processes else "use fewer processes, or more images (data.subset)")
    raise ConfigError(
        f"data.eval_batch_size={batch_size} deals the {images} {split} images in "
        f"{-(-images // batch_size)} batch(es) to {processes} processes (trainer.devices x "
        f"trainer.num_nodes), and every process needs at least one: {fix}")


def load_split(data_dir: str | Path, dataset: str, train: bool) -> tuple[Tensor, Tensor]:
    """Verified IDX files -> (images (N, 1, 28, 28) float in [0, 1], labels (N,) long)."""
    images, labels = data_files.load_idx(data_dir, dataset, train)
    return images.float().div_(255.0), labels


class MNISTDataModule(LightningDataModule):
    """Any registered dataset (``datasets.list_datasets()``): a seeded validation split of the
    training images, and the dataset's test set (or, where it has none, a seeded test split held
    out of the training images, as large as the validation split).

    Args:
        dataset: a registered name: ``mnist``, ``fashion_mnist``, or ``images`` (your own, at ``path``).
        data_dir: root of torchvision's layout (``data_dir/MNIST/raw``, ``data_dir/FashionMNIST/raw``).
        batch_size: training batch size.
        eval_batch_size: batch size for validation and test (no gradients, so larger is faster).
        val_size: images held out of the training images for validation; None: the dataset's
            default (10k for MNIST and Fashion-MNIST, else a tenth of the training images).
        split_seed: seed of the train/validation split; fixed so every run sees the same split.
        on_device: keep the tensors on the training device (the GPU, when there is one).
        subset: use only the first ``subset`` train/val/test images (quick runs and tests).
        predict_split: the split that ``predict`` encodes: ``train``, ``val`` or ``test``.
        path: the folder or .npz/.pt file of ``dataset: images`` (image_files.py).
        binarize: ``none`` keeps grey levels in [0, 1] (the paper's setting); ``static`` replaces
            every split by one Bernoulli draw per pixel (probability = grey level), fixed by
            ``split_seed``; ``dynamic`` draws training batches afresh at every step (seeded by the
            run's seed and the step, so a resume draws what an unbroken run would) and keeps the
            fixed draw for validation and test. The likelihoods of binarised MNIST are the ones
            the literature reports.
    """

    def __init__(
        self,
        dataset: str = "mnist",
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int | None = None,
        split_seed: int = 0,
        on_device: bool = True,
        subset: int | None = None,
        predict_split: Literal["train", "val", "test"] = "test",
        path: str | None = None,
        binarize: Literal["none", "static", "dynamic"] = "none",
    ):
        super().__init__()
        self.info = datasets.get_dataset(dataset)  # unknown names fail here, before any work
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {value}")
        if subset is not None and subset < 1:  # [:0] and [:-4] would mean all the images, or all but 4
            raise ConfigError(f"data.subset must be >= 1 (the first N images of each split), got {subset}: "
                              "leave it out (null) for all the images")
        train = (self.info.split_sizes or {}).get("train")
        if val_size is not None and not (0 < val_size < (train or float("inf"))):
            raise ConfigError(f"data.val_size must be in (0, {train or 'the training images'}), "
                              f"got {val_size}")
        self.save_hyperparameters()
        self.train_set = self.val_set = self.test_set = None

    @cached_property
    def loaded(self) -> datasets.Loaded:
        """The dataset's images, read once (on the CPU): downloadable IDX files through data_files
        (verified by md5), else the entry's own ``load`` of data.path, checked here (uint8 or float
        [0, 1] images, labels 0..K-1) so that a bad file stops the run before it trains."""
        info, data_dir = self.info, self.hparams.data_dir
        if info.files is not None:
            return datasets.Loaded(data_files.load_idx(data_dir, info.name, train=True),
                                   data_files.load_idx(data_dir, info.name, train=False), info.class_names)
        path = self.hparams.path
        loaded = info.load(path)
        source = f"data.dataset={info.name}" + (f" data.path={path}" if path else "")
        return image_files.check_loaded(loaded, info.class_names or loaded.class_names, source)

    @property
    def image_shape(self) -> ImageShape:
        """(C, H, W): the registry's, or read from the files. The CLI links it to model.image_shape."""
        return tuple(self.info.image_shape or self.loaded.train[0].shape[1:])

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self.info.class_names or (self.loaded.class_names if self.info.files is None else None)

    def split_sizes(self) -> dict[str, int]:
        """Images in train/val/test before ``subset``, known without reading the registry's files."""
        sizes = self.info.split_sizes or {"train": len(self.loaded.train[1]),
                                          "test": len(self.loaded.test[1]) if self.loaded.test else 0}
        val = self.val_images(sizes["train"])
        if sizes.get("test"):
            return {"train": sizes["train"] - val, "val": val, "test": sizes["test"]}
        return {"train": sizes["train"] - 2 * val, "val": val, "test": val}

    def val_images(self, train_file: int) -> int:
        val = self.hparams.val_size or self.info.val_size or max(1, train_file // 10)
        held = val if self.info.split_sizes or self.loaded.test else 2 * val  # (+ a test split)
        if not 0 < held < train_file:
            raise ConfigError(f"data.val_size={val} leaves no training images of the {train_file} in "
                              f"{self.hparams.dataset}" + ("" if held == val else " (a test split of "
                              "as many is held out too: the files have none)") + ": lower data.val_size")
        return val

    def prepare_data(self) -> None:
        if self.info.files is not None:
            data_files.prepare_for_run(self.hparams.data_dir, self.hparams.dataset)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        device = self.trainer.strategy.root_device if self.trainer and hp.on_device else "cpu"
        loaded = self.loaded
        images, labels = unit_float(loaded.train[0]), loaded.train[1]  # (N, C, H, W) in [0, 1]
        val_size = self.val_images(len(labels))
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(hp.split_seed))
        if loaded.test is None:  # no test file: a seeded test split, then val, out of train
            test_idx, perm = perm[:val_size], perm[val_size:]
            test_images, test_labels = images[test_idx], labels[test_idx]
        else:
            test_images, test_labels = unit_float(loaded.test[0]), loaded.test[1]
        if self.info.files is not None:  # the registry knows the rest: free the uint8 copies
            del self.loaded
        val_idx, train_idx = perm[:val_size], perm[val_size:]
        self.split_indices = {"train": train_idx, "val": val_idx}  # rows of the training file
        n = hp.subset or None
        splits = {"train": images[train_idx][:n], "val": images[val_idx][:n], "test": test_images[:n]}
        for i, name in enumerate(splits):  # one fixed draw per split (dynamic: train stays grey)
            if hp.binarize == "static" or (hp.binarize == "dynamic" and name != "train"):
                generator = seeded_generator("cpu", BINARIZE, hp.split_seed, i)
                splits[name] = torch.bernoulli(splits[name], generator=generator)
        self.train_set = InMemoryImages(splits["train"].to(device), labels[train_idx][:n].to(device))
        self.val_set = InMemoryImages(splits["val"].to(device), labels[val_idx][:n].to(device))
        self.test_set = InMemoryImages(splits["test"].to(device), test_labels[:n].to(device))
        if self.trainer is not None:
            for split, dataset in (("validation", self.val_set), ("test", self.test_set)):
                check_eval_batches(len(dataset), hp.eval_batch_size, self.trainer.world_size, split)

    def train_dataloader(self) -> DataLoader:
        # Shuffled from seed + epoch (Lightning calls set_epoch each epoch), not from the global
        # RNG, which Lightning does not restore on resume: a resumed run sees the batches an
        # uninterrupted one would. The seed is seed_everything's, as for Lightning's own sampler;
        # under DDP each rank takes its share of the same permutation.
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        sampler = DistributedSampler(self.train_set, num_replicas=world, rank=rank, shuffle=True,
                                     seed=int(os.environ.get("PL_GLOBAL_SEED", 0)), drop_last=True)
        return ResumableLoader(self.train_set, batch_size=self.hparams.batch_size, sampler=sampler,
                               drop_last=True, collate_fn=_whole_batch)

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple:
        """Dynamic binarisation: a fresh Bernoulli draw of each training batch's grey levels."""
        if self.hparams.binarize != "dynamic" or self.trainer is None or not self.trainer.training:
            return batch
        if isinstance(batch, Tensor):  # the model summary's example input, not a training batch
            return batch
        x, y = batch
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # as the training noise: resumes draw alike
        generator = seeded_generator(x.device, BINARIZE, seed, self.trainer.global_step,
                                     self.trainer.global_rank)
        return torch.bernoulli(x, generator=generator), y

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        split = {"train": self.train_set, "val": self.val_set, "test": self.test_set}
        return self._eval_loader(split[self.hparams.predict_split])

    def _eval_loader(self, dataset: InMemoryImages) -> DataLoader:
        sampler = None
        if self.trainer is not None and self.trainer.world_size > 1:
            sampler = UnpaddedDistributedSampler(dataset, self.trainer.world_size,
                                                 self.trainer.global_rank, self.hparams.eval_batch_size)
        return DataLoader(dataset, batch_size=self.hparams.eval_batch_size, sampler=sampler,
                          collate_fn=_whole_batch)
