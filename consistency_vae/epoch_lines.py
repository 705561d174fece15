"""What fit shows while it trains.

One line per epoch where there is no terminal: a redirected ``make train > log`` once wrote 2.4 MB
of progress bar (a carriage-return redraw per step). ``fit`` turns the bar off when stdout is not
a terminal and its ``trainer.enable_progress_bar`` was not set, and adds ``EpochLines``:

    epoch 3/25: val ELBO -160.21 nats, val KL(z'||z) 1.412 nats, alpha 1 (4.1 s)

With a bar, ``ResumedEpochBar``: a run resumed mid-epoch gets no ``on_train_epoch_start``, where
Lightning's bar learns its total and its epoch, so it read "Training: 189/?".
"""

import sys
import time

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities.rank_zero import rank_zero_only


class EpochLines(Callback):
    """Prints the epoch's validation ELBO and KL(z'||z), alpha and its wall time, on rank zero."""

    def __init__(self):
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()

    @rank_zero_only
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # callbacks run before the module's hook: this epoch's validation is in, its train means not yet
        metrics = trainer.callback_metrics
        parts = [f"val ELBO {float(metrics['val/elbo']):.2f} nats"] if "val/elbo" in metrics else []
        if "val/kl_consistency" in metrics:
            parts.append(f"val KL(z'||z) {float(metrics['val/kl_consistency']):.3f} nats")
        parts.append(f"alpha {float(pl_module.alpha):.4g}")
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        seconds = time.perf_counter() - self._start
        print(f"epoch {trainer.current_epoch + 1}{total}: {', '.join(parts)} ({seconds:.1f} s)", flush=True)


class ResumedEpochBar(Callback):
    """After Lightning's bar has started (callbacks run in order, and the trainer's bar is first),
    a mid-epoch resume sets the bar up as the epoch's start would have."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        bar = trainer.progress_bar_callback
        if isinstance(bar, TQDMProgressBar) and trainer.fit_loop.epoch_loop.batch_progress.current.ready > 0:
            bar.on_train_epoch_start(trainer, pl_module)


def use_lines_without_a_terminal(trainer_config, stream=sys.stdout) -> bool:
    """In place, before the trainer is built: no progress bar and EpochLines instead, unless stdout
    is a terminal or the user chose (``--trainer.enable_progress_bar``). True if it switched."""
    if stream.isatty() or trainer_config.get("enable_progress_bar") is not None:
        return False
    trainer_config.enable_progress_bar = False
    return True
