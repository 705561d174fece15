"""LightningCLI for fit/validate/test/predict: the project's checks, help and run folders around it.

Configs are read in jsonargparse's ``omegaconf+`` mode: interpolations such as
``${data.dataset}`` are resolved after the command-line overrides, so ``--model.alpha=3`` also
renames the run folder that interpolates it. The entry point, which also dispatches the
project's own commands, is cli.py.
"""

import signal
import sys
import warnings
from pathlib import Path

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from consistency_vae import (
    checkpointing,
    cli_checks,
    cli_help,
    resume_flags,
    run_folders,
    run_name,
    run_record,
    run_start,
    threads,
)
from consistency_vae.datamodule import MNISTDataModule
from consistency_vae.epoch_lines import EpochLines, ResumedEpochBar, use_lines_without_a_terminal
from consistency_vae.errors import CheckpointError
from consistency_vae.model import ConsistencyVAE
from consistency_vae.quiet import wandb_run_line
from consistency_vae.tracking import SaveConfigEverywhere, ensure_wandb_mode

# Absolute interpolation paths (${data.dataset}) keep working under the fit/test/... subcommands.
set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
run_name.register()  # ${run_name:...} names the run folder in configs/mnist.yaml

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
CKPT_ALIASES = ("last", "best", "hpc", "registry")


class ConsistencyCLI(LightningCLI):
    """LightningCLI with up-front checks and a one-line summary after ``fit``."""

    _output: tuple[Path, Path | None] = (Path("runs"), None)  # (save_dir, run folder if known)
    _ckpt: dict | None = None  # the --ckpt_path file, once read
    _run_start: run_start.RecordRunStart | None = None  # fit's; knows whether training began
    _config_files: list[str] = []  # the --config files of the command line
    _epoch_lines = False  # fit without a terminal: EpochLines in place of the progress bar

    def add_arguments_to_parser(self, parser) -> None:
        # The image shape is the data's (datasets.py): it reaches the networks once, here.
        parser.link_arguments("data.image_shape", "model.image_shape", apply_on="instantiate")
        parser.add_argument("--threads", type=int | None, default=None, help=threads.HELP)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand != "fit":
            parser.add_argument("--wandb", type=bool, default=False,
                                help="also log to W&B, as a new W&B run; else only into the "
                                     "checkpoint's run folder")
        return parser

    def parse_arguments(self, parser, args) -> None:
        """``--help``: the short help (cli_help); ``--help=all``: LightningCLI's full one."""
        argv = sys.argv[1:] if args is None else list(args)
        self._config_files = cli_help.config_files(argv)
        if not cli_help.wants_short_help(argv):
            self.config = parser.parse_args(cli_help.full_help_argv(argv))
            return
        rest = [a for a in argv if a not in cli_help.HELP_FLAGS]
        self.config = parser.parse_args(rest)  # the values the given --config and flags lead to
        sub = rest[0]
        print(cli_help.subcommand_help(self._subcommand_parsers[sub], self.config[sub],
                                       f"consistency-vae {sub}", bool(self._config_files)))
        sys.exit(0)

    def before_instantiate_classes(self) -> None:
        # After parsing, so that a typo in a flag gets its error alone, without the W&B notice;
        # before the logger exists. test/validate/predict log to W&B only if asked (--wandb).
        sub = self.subcommand  # None: run=False, set up for the caller's own fit
        threads.apply(self.config[sub].get("threads") if sub else self.config.get("threads"))
        if sub in ("fit", None) or self.config[sub].get("wandb"):
            ensure_wandb_mode()  # no credentials and no WANDB_MODE: offline, not a hang or a crash
        self._epoch_lines = sub == "fit" and use_lines_without_a_terminal(self.config[sub].trainer)

    def _parse_ckpt_path(self) -> None:
        """Runs right after parsing, where Lightning reads the checkpoint's hyperparameters into
        the config. First: ``fit --ckpt_path last`` becomes the newest run folder of this name
        (see run_folders.resolve), and an unreadable or non-Lightning file fails in one line."""
        subcommand, ckpt = self.config.get("subcommand"), None
        if subcommand:
            cli_checks.refuse_overlay_alone(self._config_files)
            if subcommand != "fit":  # evaluating is not a new run (see run_folders.evaluation_output)
                run_folders.evaluation_output(subcommand, self.config[subcommand])
            cli_checks.refuse_wandb_online_without_key(self.config[subcommand])
            self._output = run_folders.resolve(subcommand, self.config[subcommand])
            ckpt = self.config[subcommand].get("ckpt_path")
            if ckpt and ckpt not in CKPT_ALIASES:
                if not Path(ckpt).is_file():
                    raise CheckpointError(f"--ckpt_path {ckpt} does not exist: give the path of a .ckpt "
                                          "file, or 'last' to resume the latest run")
                self._ckpt = checkpointing.read_cli_checkpoint(ckpt, self._model_class)
        asked = self.config[subcommand].clone() if subcommand else None
        try:
            super()._parse_ckpt_path()
        except SystemExit as err:  # its hyperparameters are not ConsistencyVAE's
            raise CheckpointError(f"--ckpt_path {ckpt} holds the hyperparameters of another model: pass a "
                                  ".ckpt written by `consistency-vae fit`") from err
        if subcommand == "fit" and self._ckpt is not None:
            # Lightning read the checkpoint's hyper-parameters over the config's, which has already
            # named the run folder: each difference is honoured (the config's value back) or refused.
            # test/validate/predict evaluate the checkpoint as it was trained: its values stay.
            for line in resume_flags.check(ckpt, asked, self.config[subcommand].model, self._ckpt):
                print(line, file=sys.stderr)

    def _check_ckpt_path(self) -> None:
        if self._ckpt is not None:
            checkpointing.check_architecture(self.config[self.subcommand].ckpt_path, self._ckpt["state_dict"],
                                             self.model)

    def _check_output(self, need_bytes: int = 0) -> None:
        """Keep an earlier attempt's logs in a reused folder; fail now if it cannot be written."""
        if not run_folders.is_main_process():
            return
        save_dir, folder = self._output
        if self.subcommand == "fit" and folder is not None and folder.is_dir():
            for kept in run_folders.keep_previous_attempt(folder):
                print(f"consistency-vae: kept the earlier attempt's {kept.name}", file=sys.stderr)
            # the CSVLogger's "Previous log files in this directory will be deleted": kept just above
            warnings.filterwarnings("ignore", message=r"Experiment logs directory .* is not empty")
        run_folders.check_writable(folder if folder is not None and folder.is_dir() else save_dir, need_bytes)

    def _run_subcommand(self, subcommand: str) -> None:
        """``fit`` leaves the run's status and its merged metrics record in the run folder however
        it ends (see run_record), and after Ctrl-C says how to resume, as after SIGTERM."""
        if subcommand != "fit":
            return super()._run_subcommand(subcommand)
        status = "failed"
        try:
            super()._run_subcommand(subcommand)
            status = "interrupted" if self.trainer.interrupted else "finished"
        except SIGTERMException:
            status = "interrupted"
            raise
        except SystemExit as err:  # Lightning's graceful shutdown after Ctrl-C ends in sys.exit(1)
            if not isinstance(err.__context__, KeyboardInterrupt):
                raise
            status = "interrupted"
            if run_folders.is_main_process():
                last = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none yet"
                print(f"consistency-vae: stopped by Ctrl-C (SIGINT); {cli_help.resume_hint(sys.argv)} "
                      f"(it restarts from the last checkpoint, {last})", file=sys.stderr)
            raise SystemExit(128 + signal.SIGINT) from None  # the shell's code for Ctrl-C
        finally:
            self._record_run(status)

    def _record_run(self, status: str) -> None:
        if self._run_start is None or not self._run_start.started:  # refused before training began
            return
        folder = run_start.run_folder(self.trainer)
        if folder is None or not folder.is_dir():
            return
        done = self.trainer.fit_loop.epoch_progress.current.processed  # whole epochs trained
        try:
            run_record.write_status(folder, status, epochs_done=done, max_epochs=self.trainer.max_epochs)
            run_record.write_merged(folder)
        except OSError as err:  # never hide why the run ended behind a logging failure
            print(f"consistency-vae: could not write the run's record in {folder}: {err}", file=sys.stderr)

    def before_fit(self) -> None:
        cli_checks.refuse_empty_epochs(self.datamodule, self.trainer)  # before any work
        # no terminal: a line per epoch, not a redrawn bar; else a bar that survives a resume
        self.trainer.callbacks.append(EpochLines() if self._epoch_lines else ResumedEpochBar())
        self._run_start = run_start.RecordRunStart()  # status and W&B id into the run folder, at setup
        self.trainer.callbacks.append(self._run_start)
        self._check_ckpt_path()
        # best + last + one being written, each with the weights and Adam's two moments
        weights = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        self._check_output(need_bytes=9 * weights)

    def before_validate(self) -> None:
        cli_checks.refuse_empty_limits(self.datamodule, self.trainer, ("val",))  # every rank alike
        self._check_ckpt_path()
        self._check_output()

    def before_test(self) -> None:
        cli_checks.refuse_empty_limits(self.datamodule, self.trainer, ("test",))
        self._check_ckpt_path()
        self._check_output()

    def before_predict(self) -> None:
        self._check_ckpt_path()
        self._check_output()

    def after_predict(self) -> None:
        for path in cli_checks.save_predictions(self.trainer, self.datamodule):
            print(f"consistency-vae: predictions written to {path}")

    def after_fit(self) -> None:
        """Test the best checkpoint and print where it is with its test ELBO and KL(z'||z); say which
        epoch it is, and the last epoch's KL(z'||z) when that is another (last.ckpt and the figures)."""
        trainer = self.trainer
        if trainer.interrupted or trainer.fast_dev_run:
            return
        cli_checks.refuse_untrained(trainer)  # no "Done" for a fit that trained no step
        ckpt = trainer.checkpoint_callback
        best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
        last_epoch, last_kl = trainer.current_epoch, _last_kl(trainer.callback_metrics)  # before test
        results = trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best,
                               verbose=False)
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask, not rank 0 alone
        if trainer.is_global_zero and results:
            r = results[0]
            tested = self.model._weights_epoch  # 0-based, as in the checkpoint's file name
            if best:
                where = f"{best} (epoch {tested + 1} of {last_epoch}, chosen by {ckpt.monitor})"
            elif ckpt is not None and ckpt.last_model_path:  # e.g. --trainer.limit_val_batches=0
                where = (f"none (no validation to select by): tested the final weights, saved as "
                         f"{ckpt.last_model_path}")
            else:
                where = "(no checkpoint callback: weights kept in memory only)"
            target = (f" (kl_target {self.model.hparams.kl_target:g})"
                      if self.model.hparams.alpha_mode == "constrained" else "")
            lines = [f"\nDone. Best checkpoint: {where}",
                     f"  test ELBO {r['test/elbo']:.2f} nats   test KL(z'||z) {r['test/kl_consistency']:.3f} "
                     f"nats{target}   (run folder: {log_dir})"]
            if best and tested + 1 != last_epoch and last_kl is not None:
                lines.append(f"  the last epoch ({last_epoch}), in last.ckpt and the run's figures: "
                             f"{last_kl[0]} KL(z'||z) {last_kl[1]:.3f} nats")
            if wandb_line := wandb_run_line(trainer.loggers):
                lines.append(wandb_line)
            print("\n".join(lines))


def _last_kl(metrics: dict) -> tuple[str, float] | None:
    """The last epoch's KL(z'||z): the test set's (TestSetConsistency), else the validation set's."""
    for key in ("test/kl_consistency", "val/kl_consistency"):
        if key in metrics:
            return key.split("/")[0], float(metrics[key])
    return None


def lightning_cli(args: list[str] | None = None, run: bool = True,
                  cli_class: type[ConsistencyCLI] = ConsistencyCLI) -> ConsistencyCLI:
    return cli_class(
        ConsistencyVAE,
        MNISTDataModule,
        args=args,
        run=run,
        parser_class=cli_help.ProjectParser,  # parse errors: a short usage, the error last
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_callback=SaveConfigEverywhere,  # config.yaml in the run folder, and in W&B
        save_config_kwargs={"overwrite": False},
    )
