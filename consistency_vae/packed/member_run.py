"""One member of a pack as its solo ``fit``: the same command line, run folder and files.

``MemberCLI`` parses and builds the member's own ``consistency-vae fit ...`` command exactly as
``fit`` does (training_cli.ConsistencyCLI: the config, ``--ckpt_path`` and its resume checks, the
run folder, the W&B id, ``seed_everything`` before the model is built, so the same initial
weights), and stops where ``fit`` would call ``trainer.fit``. ``MemberRun`` then writes, from the
pack's state, what the solo run writes into its folder:

- at the start: ``config.yaml`` (which retrains the member solo), the run-info JSON for the sweep
  runner, ``status.json`` and ``wandb_id`` (the member's own SaveConfigEverywhere and
  RecordRunStart callbacks, called as Lightning calls them at setup);
- after each epoch: the epoch's ``train/*_epoch``, ``val/*`` and ``test/*`` rows into each of its
  loggers (CSV: ``metrics.csv``; W&B: its own run), and ``checkpoints/last.ckpt`` plus
  ``best-epochNN.ckpt`` when ``val/selection`` improved (packed/checkpoint.py);
- at the end: the figures of the last weights (its figure callbacks) and its training curves, the
  final test of the best checkpoint through ``trainer.test`` (the solo run's last row of
  metrics.csv), ``status.json``, ``metrics.merged.csv`` and the ``Done.`` lines.

What a packed run folder does not have: the per-step ``train/*`` rows (every 50 steps in a solo
run): a pack logs the epoch means only. Where the member has an EpochTimer, its
``time/train_epoch_s`` is its share of the pack's training time (the pack's, divided by the
members that trained the epoch), and ``time/pack_train_epoch_s`` the pack's own.
"""

from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from consistency_vae import callbacks, run_record, run_start
from consistency_vae.curves import TrainingCurves
from consistency_vae.packed import checkpoint
from consistency_vae.packed.members import PackMember
from consistency_vae.timing import EpochTimer
from consistency_vae.training_cli import ConsistencyCLI, lightning_cli

# What may differ between the members of one pack; every other value of their configs is shared.
PER_MEMBER_KEYS = ("seed_everything", "model.alpha", "model.alpha_mode", "model.kl_target", "ckpt_path",
                   "trainer.logger")  # the loggers name each member's own run folder and W&B run


class MemberCLI(ConsistencyCLI):
    """``consistency-vae fit ARGS`` up to the point where it would train."""

    def _run_subcommand(self, subcommand: str) -> None:
        self.before_fit()  # fit's checks: epochs to train, disk space, the checkpoint's architecture


def member_cli(argv: list[str]) -> MemberCLI:
    """The member's fit command (``argv`` without the leading ``fit``), built, not run."""
    return lightning_cli(["fit", *argv], run=True, cli_class=MemberCLI)


class MemberRun:
    """The solo side of member ``index`` of a pack: its CLI's trainer, model and run folder."""

    def __init__(self, cli: MemberCLI, index: int):
        self.cli, self.index = cli, index
        self.trainer, self.model, self.datamodule = cli.trainer, cli.model, cli.datamodule
        self.config = cli.config["fit"]
        self.folder = run_start.run_folder(self.trainer)
        self.checkpoints = next((c for c in self.trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        self.best_path: str | None = None
        self.best_score: float | None = None
        self.last_path: str | None = None

    def member(self) -> PackMember:
        hp = self.model.hparams
        seed = int(self.config.seed_everything)
        return PackMember(seed, float(hp.alpha), hp.alpha_mode, float(hp.kl_target))

    @property
    def max_epochs(self) -> int:
        return int(self.trainer.max_epochs)

    @property
    def ckpt_path(self) -> str | None:
        return self.config.get("ckpt_path")

    def start(self) -> None:
        """config.yaml, run-info, status.json and wandb_id, as at the setup of the solo ``fit``."""
        for logger in self.trainer.loggers:  # one process holds every member's W&B run
            if isinstance(logger, WandbLogger):
                logger._wandb_init["reinit"] = "create_new"
        for cb in self.trainer.callbacks:
            if isinstance(cb, SaveConfigCallback | run_start.RecordRunStart):
                cb.setup(self.trainer, self.model, "fit")
        if self.checkpoints is not None:
            self.checkpoints.dirpath = str(self.folder / "checkpoints")

    def resume(self, state: dict) -> None:
        """The best and last checkpoints so far, from the member's last.ckpt (its ModelCheckpoint's
        state), so that the resumed pack keeps selecting as the unbroken one."""
        if self.checkpoints is None:
            return
        saved = state.get("callbacks", {}).get(self.checkpoints.state_key, {})
        self.best_path = saved.get("best_model_path") or None
        score = saved.get("best_model_score")
        self.best_score = None if score is None else float(score)
        self.last_path = saved.get("last_model_path") or None

    def end_epoch(self, pack, epoch: int, row: dict[str, float], test: dict[str, float] | None,
                  global_step: int, batches_per_epoch: int, val_batches: int, improved: bool,
                  writer: checkpoint.Writer) -> None:
        """Log epoch ``epoch`` (0-based) and hand its checkpoints to ``writer`` (built here, from
        the pack's state now; written in the background)."""
        step = global_step - 1  # where Lightning logs epoch-end values: the epoch's last step
        if not any(isinstance(cb, EpochTimer) for cb in self.trainer.callbacks):  # the solo run's keys only
            row = {k: v for k, v in row.items() if not k.startswith("time/")}
        for logger in self.trainer.loggers:
            val = {k: v for k, v in row.items() if k.startswith("val/")}
            logger.log_metrics(val | {"epoch": epoch}, step)
            rest = {k: v for k, v in row.items() if not k.startswith("val/")} | (test or {})
            logger.log_metrics(rest | {"epoch": epoch}, step)
            logger.save()
        if self.checkpoints is None:
            return
        names = {"epoch": epoch, "step": global_step}
        last = self.checkpoints.format_checkpoint_name(names, ModelCheckpoint.CHECKPOINT_NAME_LAST)
        kwargs = dict(epoch=epoch, global_step=global_step, batches_per_epoch=batches_per_epoch,
                      val_batches=val_batches)
        writes: list[tuple[dict, str]] = []
        old = None
        if improved and self.checkpoints.monitor:  # ModelCheckpoint saves the best first, then last.ckpt
            old, self.best_path = self.best_path, self.checkpoints.format_checkpoint_name(names)
            self.best_score = row.get(self.checkpoints.monitor)
            best = {"path": self.best_path, "score": self.best_score, "last_path": self.last_path or ""}
            writes.append((checkpoint.member_checkpoint(pack, self.index, self.model, self.datamodule,
                                                        self.trainer, best=best, **kwargs), self.best_path))
        self.last_path = last
        best = {"path": self.best_path, "score": self.best_score, "last_path": last}
        last_ckpt = checkpoint.member_checkpoint(pack, self.index, self.model, self.datamodule, self.trainer,
                                                 best=best, **kwargs)
        stale = old if old and old != self.best_path else None

        def write() -> None:
            if writes:
                checkpoint.save(*writes[0])
            if stale:
                Path(stale).unlink(missing_ok=True)  # save_top_k: 1
            checkpoint.save(last_ckpt, last)

        writer.submit(write)

    def finish(self, last_weights: dict, failed: str | None, epochs_done: int) -> None:
        """Figures of the last weights, the final test of the best checkpoint, the run's record."""
        if failed is None:
            self.model.load_state_dict(last_weights, strict=False)
            self.datamodule.setup("test")
            self.trainer.datamodule = self.datamodule
            for cb in self.trainer.callbacks:  # the solo run's on_train_end figures, in its order
                if isinstance(cb, callbacks._FigureCallback | TrainingCurves):
                    cb.draw(self.trainer, self.model, epochs_done)
            results = self.trainer.test(self.model, datamodule=self.datamodule,
                                        ckpt_path=self.best_path or self.last_path, verbose=False)
            self._done_lines(results[0] if results else {}, epochs_done)
        status = "failed" if failed else "finished"
        run_record.write_status(self.folder, status, epochs_done=epochs_done, max_epochs=self.max_epochs)
        run_record.write_merged(self.folder)
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger) and logger._experiment is not None:
                logger.experiment.finish(exit_code=1 if failed else 0)

    def _done_lines(self, r: dict, epochs_done: int) -> None:
        tested = self.model._weights_epoch
        monitor = self.checkpoints.monitor if self.checkpoints else None
        where = (f"{self.best_path} (epoch {tested + 1} of {epochs_done}, chosen by {monitor})"
                 if self.best_path and tested is not None else str(self.last_path))
        print(f"Done [{self.member().name()}]. Best checkpoint: {where}\n"
              f"  test ELBO {r.get('test/elbo', float('nan')):.2f} nats   test KL(z'||z) "
              f"{r.get('test/kl_consistency', float('nan')):.3f} nats   (run folder: {self.folder})",
              flush=True)


def test_set_means(pack, runs: list[MemberRun]) -> dict[str, torch.Tensor] | None:
    """The test set's KL(z'||z) and ELBO of every member, as its TestSetConsistency callback
    computes them after each epoch (None when the members have no such callback)."""
    from consistency_vae.packed.fit import validate

    cb = next((c for c in runs[0].trainer.callbacks if isinstance(c, callbacks.TestSetConsistency)), None)
    if cb is None:
        return None
    dm = runs[0].datamodule
    if getattr(dm, "test_set", None) is None:
        dm.setup("test")
    images = dm.test_set.images[: cb.max_images].to(pack.device)
    means = validate(pack, images, cb.batch_size, seed=cb.seed)
    return {f"test/{k}": means[f"val/{k}"] for k in ("kl_consistency", "elbo")}

