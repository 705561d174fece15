"""DDP through Lightning on CPU (2 processes, gloo): it trains, and testing one checkpoint with one
or two processes gives the same test/* metrics, with every test image counted exactly once.

The test set has 1101 images in evaluation batches of 200: 6 batches, the last one partial, so two
ranks get uneven shards (600 and 501 images) that a padding sampler would have evened out by
repeating an image.
"""

import json
from pathlib import Path

import pytest
import torch
from lightning import Callback

from tests.cli_runs import BASE, RUN_NAME, csv_only, run
from tests.float32 import approx_f32

N_IMAGES, EVAL_BATCH = 1101, 200
DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
ONE = ["--trainer.devices=1", "--trainer.accelerator=cpu"]
LATENT = 2  # configs/mnist.yaml


class TestImagesSeen(Callback):
    """Write, per rank, the evaluation sampler's class, how many test images the rank saw, and the
    test metrics (synced over the ranks)."""

    __test__ = False  # a callback, not a test class

    def __init__(self, out_dir: str):
        self.out_dir, self.images = out_dir, 0

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.images += len(batch[0])

    def on_test_end(self, trainer, pl_module) -> None:
        sampler = type(trainer.test_dataloaders.sampler).__name__
        metrics = {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        record = {"world_size": trainer.world_size, "sampler": sampler, "images": self.images,
                  "metrics": metrics}
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
        self.images = 0


def cli_args(command: str, data_dir: Path, probe: Path, *extra: str) -> list[str]:
    probe.mkdir(parents=True, exist_ok=True)
    return [command, "--config", BASE, "--data.data_dir", str(data_dir), f"--data.subset={N_IMAGES}",
            f"--data.eval_batch_size={EVAL_BATCH}", "--trainer.enable_progress_bar=false", csv_only(),
            "--trainer.callbacks+=tests.test_ddp.TestImagesSeen",
            f"--trainer.callbacks.init_args.out_dir={probe}", *extra]


def shards(probe: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(probe.glob("rank*.json"))]


@pytest.mark.slow
def test_ddp_trains_and_its_test_metrics_match_one_process(tmp_path, data_dir):
    code, log = run(tmp_path, *cli_args("fit", data_dir, tmp_path / "fit", *DDP, "--trainer.max_epochs=1"))
    assert code == 0, log
    last = tmp_path / "runs" / RUN_NAME / "version_0/checkpoints/last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == (N_IMAGES // 2) // 128  # each rank: half the images, batches of 128

    results = {}
    for name, flags in {"one": [*ONE, f"--ckpt_path={last}"], "two": [*DDP, f"--ckpt_path={last}"],
                        "untrained": ONE}.items():  # no checkpoint: the fit's seeded initial weights
        code, log = run(tmp_path, *cli_args("test", data_dir, tmp_path / name, *flags))
        assert code == 0, log
        results[name] = shards(tmp_path / name)

    fit, one, two = shards(tmp_path / "fit"), results["one"][0], results["two"]
    assert set(one["metrics"]) >= {"test/elbo", "test/kl_consistency", "test/recon", "test/kl", "test/loss"}
    # Every rank reports the synced whole-test-set values; the shards run other float32 batches
    # than one process does (tests/float32.py), hence float32 precision, not bit for bit.
    for ranks in (two, fit):  # the fit's own closing test is of the same checkpoint
        for rank in ranks:
            assert rank["metrics"] == approx_f32(one["metrics"], LATENT)
    # It trained: the ELBO of the checkpoint is above that of the same seeded weights before the
    # 4 Adam steps (gradient steps on -ELBO - alpha KL(z'||z)).
    untrained = results["untrained"][0]["metrics"]
    assert one["metrics"]["test/elbo"] > untrained["test/elbo"]
    # Lightning kept our sampler under DDP; every image was seen once: no padding, no loss.
    assert [s["images"] for s in results["one"]] == [N_IMAGES]
    assert [(s["sampler"], s["images"]) for s in two] == [
        ("UnpaddedDistributedSampler", 600), ("UnpaddedDistributedSampler", 501)]
    assert [s["images"] for s in fit] == [600, 501]
