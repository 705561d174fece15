"""Where every random draw comes from: seeded streams that do not depend on batching or devices.

- Training: one generator per (seed, global step, rank), on the training device
  (``train_noise``, drawn before the step: ``ConsistencyVAE.training_step``, a pack's step), so a
  resumed run draws what an unbroken one would.
- Evaluation: one eps row per image of a split, ``eval_noise(start, n, ...)``. Row i depends on
  (seed, i) alone: rows come in blocks of ``BLOCK`` images, each block drawn on the CPU from its
  own generator. So an image gets the same z in ``trainer.test`` (any batch size, 1 or N
  processes), in the ``TestSetConsistency`` callback, in the figures and in ``evaluate``, on any
  device: one number for one thing.
- Binarised data (``data.binarize``): the fixed draws of a split from (BINARIZE, split_seed,
  split); dynamic training draws from (BINARIZE, seed, global step, rank), like training noise.
"""

import numpy as np
import torch
from torch import Tensor

from consistency_vae.errors import ConfigError

TRAIN_NOISE, EVAL_NOISE, PRIOR_NOISE, BINARIZE = 0, 1, 2, 3  # first key of seeded_generator: one per stream
BLOCK = 1024  # eval rows per generator: a few kB of draws per block, at most two blocks per batch


def seeded_generator(device: torch.device | str, *keys: int) -> torch.Generator:
    """A generator seeded from non-negative integer keys alone, hashed by numpy's SeedSequence
    (nearby keys give unrelated streams)."""
    seed = int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0])
    return torch.Generator(device=device).manual_seed(seed)


def train_noise(n: int, latent_dim: int, seed: int, step: int, rank: int,
                device: torch.device | str) -> Tensor:
    """(n, latent_dim) eps of a training step's z = mu + sigma * eps, from (seed, step, rank) alone."""
    return torch.randn((n, latent_dim), device=device,
                       generator=seeded_generator(device, TRAIN_NOISE, seed, step, rank))


def eval_noise(start: int, n: int, latent_dim: int, seed: int = 0) -> Tensor:
    """(n, latent_dim) standard normal eps of images start .. start + n - 1 of a split, on the CPU.

    Row i is row i % BLOCK of block i // BLOCK, drawn from seeded_generator(EVAL_NOISE, seed,
    block): the same whatever ``start`` and ``n`` slice it out.
    """
    if start < 0 or n < 0:
        raise ValueError(f"eval_noise needs start >= 0 and n >= 0, got start={start}, n={n}")
    if n == 0:
        return torch.empty(0, latent_dim)
    first, last = start // BLOCK, (start + n - 1) // BLOCK
    blocks = [torch.randn(BLOCK, latent_dim, generator=seeded_generator("cpu", EVAL_NOISE, seed, b))
              for b in range(first, last + 1)]
    offset = start - first * BLOCK
    return torch.cat(blocks)[offset:offset + n]


def first_eval_row(loader, stage: str, batch_idx: int, world_size: int, rank: int) -> int:
    """The eval_noise row of the first image of this rank's evaluation batch ``batch_idx``. The
    evaluation sampler deals whole batches round-robin (datamodule.UnpaddedDistributedSampler), so
    it is global batch batch_idx * world_size + rank, whose first image is that times the loader's
    batch size, on 1 or N processes."""
    batch_size = getattr(loader, "batch_size", None)
    if batch_size is None:
        raise ConfigError(f"{stage} needs one DataLoader with a batch_size (images are matched to "
                          f"their noise by index), got {type(loader).__name__}")
    return (batch_idx * world_size + rank) * batch_size


def eval_noise_at(indices: list[int], latent_dim: int, seed: int = 0) -> Tensor:
    """(len(indices), latent_dim): the eval_noise rows of the given image indices (figures)."""
    if not indices:
        return torch.empty(0, latent_dim)
    return torch.cat([eval_noise(int(i), 1, latent_dim, seed) for i in indices])


def prior_noise(n: int, latent_dim: int, seed: int = 0) -> Tensor:
    """(n, latent_dim) draws from N(0, I) for prior samples, on the CPU; not the test images' eps."""
    return torch.randn(n, latent_dim, generator=seeded_generator("cpu", PRIOR_NOISE, seed))
