"""The part of a run's record written from inside Lightning: the run folder a trainer logs into,
and ``status.json`` plus the W&B id at the start of ``fit``. Kept apart from run_record.py, which
readers of records (``consistency-vae runs``, ``sweep-report``) import without Lightning and torch.
"""

from pathlib import Path

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from consistency_vae import atomic
from consistency_vae.run_record import WANDB_ID, write_status


def run_folder(trainer: Trainer) -> Path | None:
    """The run folder (runs/NAME/version_N) when the first logger numbers its runs, else None."""
    first = trainer.loggers[0] if trainer.loggers else None
    return Path(first.log_dir) if isinstance(first, CSVLogger | TensorBoardLogger) else None


class RecordRunStart(Callback):
    """At the start of ``fit``, once the loggers have made the run folder: status ``running`` and
    the W&B run id into it, so that even a SIGKILLed run's folder says which W&B run to resume.
    The CLI adds it to every fit; it has no arguments and no config entry. ``started``: this
    process wrote the status (rank zero, once training set up), so the CLI writes the end too."""

    started = False

    @rank_zero_only
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        folder = run_folder(trainer)
        if stage != "fit" or folder is None:
            return
        self.started = True
        write_status(folder, "running", max_epochs=trainer.max_epochs)
        ids = [lg.version for lg in trainer.loggers if isinstance(lg, WandbLogger) and lg.version]
        if ids:
            atomic.write_text(folder / WANDB_ID, f"{ids[0]}\n")
