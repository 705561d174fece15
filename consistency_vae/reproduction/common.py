"""What the reproduction's modules share (summary, summary_md, results_figures, runs): the metric
labels, the paper's numbers, the verdict's tolerance, and two helpers. A leaf: it imports none of
them, so they import it and not each other in a circle."""

from pathlib import Path

from consistency_vae import datasets
from consistency_vae.evaluation import eval_metrics
from consistency_vae.evaluation.live_views import LiveDict, LiveTuple

# The evaluation metrics registry's labelled keys (eval_metrics.py: a metric registered there is
# summarised here), then the run's own numbers.
RUN_LABELS = {"train_epoch_s": "training s / epoch", "alpha": "final alpha"}
LABELS = LiveDict(lambda: {**eval_metrics.summary_labels(), **RUN_LABELS})
METRICS = LiveTuple(lambda: tuple(LABELS))
PAPER = {"mnist": {"vae": {"kl_consistency": 3.09}, "consistency": {"kl_consistency": 0.79}}}
TOLERANCE = 1.10  # "within 10% of epsilon or below it"
NAMES = datasets.TITLES  # dataset name -> its title, from the dataset registry


def group(records: list[dict], **where) -> list[dict]:
    return [r for r in records if all(r[k] == v for k, v in where.items())]


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch a checkpoint was written at (0-based), read without loading its tensors."""
    import torch

    if not path.is_file():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
