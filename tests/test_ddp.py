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

from tests.cli_runs import BASE, RUN_NAME, csv_only, read_test_metrics, run

N_IMAGES, EVAL_BATCH = 1101, 200
DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]


class TestImagesSeen(Callback):
    """Write, per rank, the evaluation sampler's class and how many test images the rank saw."""

    def __init__(self, out_dir: str):
        self.out_dir, self.images = out_dir, 0

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.images += len(batch[0])

    def on_test_end(self, trainer, pl_module) -> None:
        sampler = type(trainer.test_dataloaders.sampler).__name__
        record = {"world_size": trainer.world_size, "sampler": sampler, "images": self.images}
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
    run_dir = tmp_path / "runs" / RUN_NAME / "version_0"
    last = run_dir / "checkpoints/last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == (N_IMAGES // 2) // 128  # each rank: half the images, batches of 128
    ddp_fit = read_test_metrics(run_dir / "metrics.csv")
    assert ddp_fit["test/elbo"] > -544  # trained: below 784 * log 2 = 543.4 nats, a coin per pixel

    results = {}
    for name, flags in {"one": ["--trainer.devices=1", "--trainer.accelerator=cpu"], "two": DDP}.items():
        code, log = run(tmp_path, *cli_args("test", data_dir, tmp_path / name, *flags, f"--ckpt_path={last}"))
        assert code == 0, log
        # evaluation is not a new run: it writes into the checkpoint's run folder, test/version_K
        (folder,) = [p for p in (run_dir / "test").iterdir()
                     if p.name not in {r["folder"] for r in results.values()}]
        results[name] = {"folder": folder.name, "metrics": read_test_metrics(folder / "metrics.csv"),
                         "shards": shards(tmp_path / name)}

    one, two = results["one"], results["two"]
    assert set(one["metrics"]) >= {"test/elbo", "test/kl_consistency", "test/recon", "test/kl", "test/loss"}
    assert two["metrics"] == pytest.approx(one["metrics"], rel=1e-5)
    assert ddp_fit == pytest.approx(one["metrics"], rel=1e-5)  # the fit's own test: same checkpoint
    # Lightning kept our sampler under DDP; every image was seen once: no padding, no loss.
    assert [s["images"] for s in one["shards"]] == [N_IMAGES]
    assert [(s["sampler"], s["images"]) for s in two["shards"]] == [
        ("UnpaddedDistributedSampler", 600), ("UnpaddedDistributedSampler", 501)]
    assert [s["images"] for s in shards(tmp_path / "fit")] == [600, 501]
