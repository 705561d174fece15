"""A callback that times training epochs (the training loop only), for reports and `make bench`."""

import time

import torch
from lightning import Callback


class EpochTimer(Callback):
    """Wall time of each training epoch, kept in ``times`` and logged as ``time/train_epoch_s``.

    The clock runs from the first to the last training batch of the epoch: validation, the
    per-epoch test evaluation and checkpointing are not counted.
    """

    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda" and batch_idx == trainer.num_training_batches - 1:
            torch.cuda.synchronize()  # count the queued kernels of the last step
        self._last = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.times.append(self._last - self._start)
        if trainer.loggers:
            pl_module.log("time/train_epoch_s", self.times[-1], on_step=False, on_epoch=True)
