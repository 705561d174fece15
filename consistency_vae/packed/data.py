"""Each member's batches and training noise: the solo run's, for its seed and step.

The solo run's training loader (``datamodule.train_dataloader``) draws its order from a
``DistributedSampler`` seeded with the run's seed and shuffled per epoch (``set_epoch``), and keeps
whole batches only; its noise comes from ``noise.train_noise(seed, step, rank)``.
Both are rebuilt here from the same code, one member at a time: N small host-side calls per step.
"""

import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from consistency_vae import noise
from consistency_vae.noise import BINARIZE, seeded_generator


def epoch_order(dataset: Dataset, batch_size: int, seed: int, epoch: int) -> Tensor:
    """(batches, batch_size) image indices of one epoch of the solo run with this seed (one process:
    rank 0 of 1), as its ResumableLoader serves them (drop_last: whole batches only)."""
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    order = torch.as_tensor(list(sampler))
    batches = len(order) // batch_size
    return order[:batches * batch_size].view(batches, batch_size)


def pack_order(dataset: Dataset, batch_size: int, seeds: list[int], epoch: int) -> Tensor:
    """(batches, N, batch_size): step b of the epoch gathers row n for member n."""
    return torch.stack([epoch_order(dataset, batch_size, s, epoch) for s in seeds], dim=1)


def train_noise(seeds: list[int], step: int, batch: int, latent_dim: int, device: torch.device) -> Tensor:
    """(N, batch, latent_dim) eps of z = mu + sigma * eps: member n's draws are those of
    ``noise.train_noise`` in its solo run at this global step."""
    return torch.stack([noise.train_noise(batch, latent_dim, s, step, 0, device) for s in seeds])


def binarize_dynamic(x: Tensor, seeds: list[int], step: int) -> Tensor:
    """(N, B, C, H, W) grey levels -> member n's Bernoulli draw of ``data.binarize: dynamic`` at
    this step, as ``MNISTDataModule.on_after_batch_transfer`` draws it in the solo run."""
    return torch.stack([torch.bernoulli(x[n], generator=seeded_generator(x.device, BINARIZE, s, step, 0))
                        for n, s in enumerate(seeds)])
