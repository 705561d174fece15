"""What the reproduction's modules share (summary, summary_md, results_figures, runs): the metric
labels, the paper's numbers, the verdict's tolerance, and two helpers. A leaf: it imports none of
them, so they import it and not each other in a circle."""

from pathlib import Path

from consistency_vae import datasets
from consistency_vae.evaluation.live_views import LiveDict, LiveTuple

# The evaluation metrics registry's labelled keys (eval_metrics.py: a metric registered there is
# summarised here), then the run's own numbers.
RUN_LABELS = {"train_epoch_s": "training s / epoch", "alpha": "final alpha"}


def _labels() -> dict[str, str]:
    from consistency_vae.evaluation import eval_metrics  # torch: not for `reproduce --help`

    return {**eval_metrics.summary_labels(), **RUN_LABELS}


LABELS = LiveDict(_labels)
METRICS = LiveTuple(lambda: tuple(LABELS))
PAPER = {"mnist": {"vae": {"kl_consistency": 3.09}, "consistency": {"kl_consistency": 0.79}}}
TOLERANCE = 1.10  # "within 10% of epsilon or below it"
NAMES = datasets.TITLES  # dataset name -> its title, from the dataset registry


def group(records: list[dict], **where) -> list[dict]:
    return [r for r in records if all(r[k] == v for k, v in where.items())]


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch a checkpoint was written at (0-based), read without loading its tensors."""
    import torch

    from consistency_vae.checkpointing import describe_load_failure
    from consistency_vae.errors import CheckpointError

    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - truncated, corrupted, not a checkpoint: one line
        hint = "reproduce loads checkpoints safely only: evaluate it alone with --allow_pickle"
        raise CheckpointError(f"cannot read checkpoint {path}: "
                              f"{describe_load_failure(err, hint, path)}") from None
    if not isinstance(ckpt, dict) or "epoch" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint written by `consistency-vae fit` (it has no "
                              "epoch): move its run folder out of the folder that reproduce reads")
    return int(ckpt["epoch"])
