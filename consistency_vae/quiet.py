"""Keep the libraries' chatter out of a run's output: the last line a user sees is the result.

What is silenced, and why it is not the user's business:
- Lightning's "Tip: ... try installing litlogger" (an advertisement, on every run and in bench);
- lightning's ``_pytree`` deprecation warning (Lightning's use of torch's API, not ours);
- wandb's console output (WANDB_SILENT): its banner, the "anonymous setting has no effect"
  warning that Lightning's WandbLogger triggers, and ~28 lines of run history and summary printed
  *after* our result. Our own one-liners say what matters instead: offline or not and how to sync
  (``tracking.ensure_wandb_mode``), and the run's W&B page (``wandb_run_line``).
  ``WANDB_SILENT=false`` brings wandb's output back.

Nothing here hides an error: wandb raises its errors (the CLI turns them into one line), and
Lightning's own information lines (seed, devices, checkpoints) stay.
"""

import logging
import os
import warnings

TIPS = ("💡 Tip:",)  # Lightning's advertisements start so


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(TIPS)


def quiet_libraries() -> None:
    """Install the filters above; call once, before the Trainer is built. Idempotent."""
    os.environ.setdefault("WANDB_SILENT", "true")
    if os.environ["WANDB_SILENT"].lower() in ("true", "1", "yes"):
        import wandb  # 0.3 s, paid anyway by the WandbLogger of the default config

        # wandb.init reads WANDB_SILENT only after validating its settings, which is where the
        # anonymous warning is printed: configure its console from the start.
        wandb.termsetup(wandb.Settings(silent=True), None)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())


def wandb_run_line(loggers: list) -> str | None:
    """One line naming the W&B run of a finished command (its page online, its folder offline)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            run = logger.experiment
            if run.settings.mode == "disabled":  # WANDB_MODE=disabled: a no-op run, no page
                return None
            if run.settings.mode == "offline" or run.offline:
                return f"  W&B (offline): {os.path.dirname(run.dir)}; upload with wandb sync"
            return f"  W&B: {run.url}"
    return None
