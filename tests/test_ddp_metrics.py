"""Two CPU processes (gloo) give the same metrics as one process on the same data.

Each rank takes its shard from ``UnpaddedDistributedSampler`` (strided, no padding) of an odd
number of real test images, so the shards are uneven; the metrics' sum-reduced states are
synced by torchmetrics on ``compute()``: the means, and their standard errors from the summed
squares.
"""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from consistency_vae.datamodule import InMemoryImages, UnpaddedDistributedSampler, load_split
from consistency_vae.evaluation import metrics
from consistency_vae.model import ConsistencyVAE
from consistency_vae.noise import eval_noise
from tests.float32 import F32_REL, approx_f32

N_IMAGES, WORLD, LATENT, IWAE_K = 301, 2, 3, 4


def make_model() -> ConsistencyVAE:
    torch.manual_seed(0)  # the same weights in every process
    return ConsistencyVAE(latent_dim=LATENT).eval()


@torch.no_grad()
def shard_metrics(model, images, indices, iwae_seed):
    """Update the metrics with one shard, in batches of 50; return them (not yet computed)."""
    noise = eval_noise(0, N_IMAGES, LATENT)
    terms, active, iwae = metrics.LossTerms(), metrics.ActiveUnits(LATENT), metrics.IWAELogLikelihood(IWAE_K)
    generator = torch.Generator().manual_seed(iwae_seed)
    for batch in torch.as_tensor(indices).split(50):
        out = model(images[batch], noise[batch])
        terms.update(out)
        active.update(out["mu"])
        iwae.update(model, images[batch], generator)
    return terms, active, iwae


def worker(rank: int, init_file: str, data_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # two processes on a small machine: one thread each
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        images = load_split(data_dir, "mnist", train=False)[0][:N_IMAGES]
        sampler = UnpaddedDistributedSampler(InMemoryImages(images, torch.zeros(N_IMAGES)), WORLD, rank)
        terms, active, iwae = shard_metrics(make_model(), images, list(sampler), iwae_seed=rank)
        result = {**{k: v.item() for k, v in terms.compute().items()},  # compute() syncs the ranks
                  "active_units": active.compute().item(), "variances": active.variances(),
                  **{k: v.item() for k, v in iwae.compute().items()}, "shard_size": len(sampler)}
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path, data_dir):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(data_dir), str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert sorted(r["shard_size"] for r in ranks) == [150, 151]  # uneven, and nothing padded

    model = make_model()
    images = load_split(data_dir, "mnist", train=False)[0][:N_IMAGES]
    terms, active, _ = shard_metrics(model, images, list(range(N_IMAGES)), iwae_seed=0)
    single = {k: v.item() for k, v in terms.compute().items()}
    # IWAE: one process over the same shards with the same per-rank generators
    bounds = torch.cat([
        metrics.iwae_log_likelihood(model, images[list(range(r, N_IMAGES, WORLD))][i:i + 50], IWAE_K, g)
        for r in range(WORLD) for g in [torch.Generator().manual_seed(r)]
        for i in range(0, len(range(r, N_IMAGES, WORLD)), 50)]).detach().double().numpy()  # (N,)
    # Each rank runs its own float32 batches (other rows, other GEMM calls): equal to float32
    # precision, not bit for bit (tests/float32.py); the counts are integers and exact.
    for result in ranks:  # every rank sees the synced, whole-data values
        for t in metrics.TERMS:  # means and, from the summed squares, their standard errors
            assert result[t] == approx_f32(single[t], latent_dim=LATENT)
            assert result[f"{t}_se"] == approx_f32(single[f"{t}_se"], latent_dim=LATENT)
        assert result["active_units"] == active.compute().item()
        # E[mu^2] - E[mu]^2 in float64 of float32 mu: the cancellation (a factor ~5 here, means
        # ~0.2 and variances ~0.01) leaves it well inside 1e-5 relative; no absolute floor needed
        torch.testing.assert_close(result["variances"], active.variances(), rtol=F32_REL, atol=0)
        assert result["iwae_ll"] == pytest.approx(bounds.mean(), rel=F32_REL)
        assert result["iwae_ll_se"] == pytest.approx(bounds.std(ddof=1) / N_IMAGES**0.5, rel=F32_REL)
