"""Training a pack end to end, in memory: epochs of packed steps, a validation pass per epoch,
and each member's checkpoint selection by ``val/selection``, as its solo ``fit`` would choose.

What a solo ``fit`` logs per epoch, per member: ``train/{term}_epoch`` (the epoch's step means),
``train/alpha_epoch``, ``val/{term}`` (means over the whole validation split, with the evaluation
noise ``noise.eval_noise``) and ``val/selection`` (``constraint.selection_criterion``).
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from consistency_vae import step_graph
from consistency_vae.constraint import selection_criterion
from consistency_vae.datamodule import MNISTDataModule
from consistency_vae.errors import ConfigError
from consistency_vae.model import TERMS
from consistency_vae.noise import eval_noise
from consistency_vae.packed import data
from consistency_vae.packed.members import PackMember, build_models
from consistency_vae.packed.step import Pack


@dataclass
class MemberResult:
    """One member's run: its per-epoch logs, its best epoch (0-based, as checkpoint names), the
    weights of that epoch and of the end, and the failure message if it failed."""

    member: PackMember
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_selection: float = float("inf")
    best_weights: dict[str, Tensor] | None = None
    last_weights: dict[str, Tensor] | None = None
    failed: str | None = None


@torch.no_grad()
def validate(pack: Pack, images: Tensor, batch_size: int, seed: int = 0) -> dict[str, Tensor]:
    """{val/term: (N,)} and val/selection (N,): as ``ConsistencyVAE._eval_step`` on one process
    (batch b starts at image b * batch_size, and takes eval_noise rows from there), with the sums
    over batches taken in float32, as torchmetrics' MeanMetric takes them. ``seed``: of the
    evaluation noise (the test set's TestSetConsistency has its own)."""
    sums = torch.zeros(len(TERMS), len(pack.members), device=pack.device)  # (T, N)
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        noise = eval_noise(start, len(x), pack.hparams.latent_dim, seed).to(pack.device)
        out = pack.forward(x, noise, shared_input=True)
        sums += torch.stack([out[t].sum(-1) for t in TERMS])
    means = dict(zip((f"val/{t}" for t in TERMS), sums / len(images), strict=True))
    constrained = selection_criterion(means["val/elbo"], means["val/kl_consistency"], means["val/loss"],
                                      "constrained", pack.kl_target)
    means["val/selection"] = torch.where(pack.constrained, constrained, means["val/loss"])
    return means


EpochHook = Callable[[Pack, int, list[MemberResult]], None]


def fit_pack(members: list[PackMember], datamodule: MNISTDataModule, max_epochs: int,
             shared: dict | None = None, device: torch.device | str = "cpu", *,
             models: list | None = None, start_epoch: int = 0,
             restore: Callable[[Pack, list[MemberResult]], None] | None = None,
             on_epoch_end: EpochHook | None = None, capture: bool | None = None) -> list[MemberResult]:
    """Train every member for ``max_epochs`` epochs, validating after each; one MemberResult per
    member, in order. ``shared``: the ConsistencyVAE arguments common to all (lr, latent_dim, ...).

    ``models``: the members' modules as their solo runs start them (default: members.build_models);
    ``start_epoch`` and ``restore(pack, results)``: resume a pack cut off after epoch
    ``start_epoch - 1`` (restore loads the members' weights, optimizer state and best epochs);
    ``on_epoch_end(pack, epoch, results)``: after each epoch's validation and selection (to write
    the members' checkpoints and logs); ``capture``: replay the step as a CUDA graph
    (packed/graph.py; default: on CUDA, where it exists; never on a CPU)."""
    if max_epochs < 1:
        raise ConfigError(f"packed training: max_epochs must be >= 1, got {max_epochs}")
    datamodule.setup("fit")
    hp = datamodule.hparams
    train, val = datamodule.train_set, datamodule.val_set
    per_epoch = len(train) // hp.batch_size
    if per_epoch == 0:
        raise ConfigError(f"packed training: {len(train)} training images make no whole batch of "
                          f"data.batch_size={hp.batch_size}: lower the batch size or use more images")
    pack = Pack(members, models or build_models(members, shared), per_epoch * max_epochs, device)
    images = train.images.to(pack.device)
    seeds = [m.seed for m in members]
    results = [MemberResult(m) for m in members]
    if restore is not None:
        restore(pack, results)
    step = start_epoch * per_epoch
    pack.global_step.fill_(step)
    train_step = _step_function(pack, capture)
    for epoch in range(start_epoch, max_epochs):
        sums = torch.zeros(len(members), len(TERMS), device=pack.device)  # (N, T)
        counts = torch.zeros(len(members), device=pack.device)
        order = data.pack_order(train, hp.batch_size, seeds, epoch).to(pack.device)  # (batches, N, B)
        training, start = int(pack.alive.sum()), time.perf_counter()
        for batch in order:
            x = images[batch]  # (N, B, C, H, W)
            if hp.binarize == "dynamic":
                x = data.binarize_dynamic(x, seeds, step)
            noise = data.train_noise(seeds, step, hp.batch_size, pack.hparams.latent_dim, pack.device)
            alive = pack.alive.clone()
            values = train_step(x, noise)
            live = alive & pack.alive  # a member failing at this step adds nothing, as in its solo run
            sums += torch.where(live[:, None], values, torch.zeros_like(values))
            counts += live.float()
            step += 1
        if pack.device.type == "cuda":
            torch.cuda.synchronize()  # count the queued kernels of the last step, as EpochTimer does
        seconds = time.perf_counter() - start
        pack.collect_failures(per_epoch)  # the epoch's one read of the failures (a host sync)
        _end_epoch(pack, results, epoch, sums / counts.clamp(min=1)[:, None],
                   validate(pack, val.images.to(pack.device), hp.eval_batch_size), seconds, training)
        if on_epoch_end is not None:
            on_epoch_end(pack, epoch, results)
        if not bool(pack.alive.any()):
            break
    for i, result in enumerate(results):
        result.failed = pack.failed.get(i)
        result.last_weights = pack.member_weights(i)
    return results


def _step_function(pack: Pack, capture: bool | None) -> Callable[[Tensor, Tensor], Tensor]:
    """The pack's training step, or its CUDA graph (``capture``; default: on CUDA, unless the
    environment sets CONSISTENCY_VAE_CUDA_GRAPH=0, the way out should a device refuse the capture)."""
    if capture is None:
        capture = pack.device.type == "cuda" and step_graph.wanted()
    if not capture:
        return pack.train_step
    from consistency_vae.packed.graph import CapturedStep

    return CapturedStep(pack)


def _end_epoch(pack: Pack, results: list[MemberResult], epoch: int, train_means: Tensor,
               val: dict[str, Tensor], seconds: float, training: int) -> None:
    """Log the epoch of each member still training, and keep its weights if ``val/selection``
    improved: ModelCheckpoint(mode="min") keeps the first epoch, then a strictly lower value; a
    NaN counts as +inf. ``seconds``: the training loop's wall time (EpochTimer's span: no
    validation), shared by the ``training`` members that began the epoch; each is charged its
    share as ``time/train_epoch_s``, the pack's whole time is ``time/pack_train_epoch_s``."""
    for i, result in enumerate(results):
        if i in pack.failed:
            continue  # its solo run stopped at the failing step
        row = {f"train/{t}_epoch": float(train_means[i, k]) for k, t in enumerate(TERMS)}
        row |= {"train/alpha_epoch": float(pack.alpha[i])} | {k: float(v[i]) for k, v in val.items()}
        row |= {"time/train_epoch_s": seconds / training, "time/pack_train_epoch_s": seconds}
        result.epochs.append(row)
        selection = row["val/selection"]
        selection = float("inf") if selection != selection else selection
        if result.best_epoch is None or selection < result.best_selection:
            result.best_epoch, result.best_selection = epoch, selection
            result.best_weights = pack.member_weights(i)
