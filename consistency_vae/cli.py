"""The command line: LightningCLI for fit/validate/test/predict, plus a few project commands.

    consistency-vae fit --config configs/mnist.yaml --model.alpha=3
    consistency-vae data --dataset fashion_mnist
    consistency-vae evaluate --ckpt_path runs/.../last.ckpt --output eval/

The Lightning side is training_cli.py, the project commands are commands.py; this module only
dispatches between them (the ``consistency-vae`` script and ``python -m consistency_vae``).
Lightning and torch are imported only on the way to a command that computes: importing them
costs seconds (about 4.7 s on a quiet 2-core machine), which ``runs`` or ``sweep-report --help``
should not pay (tests/test_startup.py checks which commands import no torch).
"""

import signal
import sys
from typing import TYPE_CHECKING

from consistency_vae import cli_help
from consistency_vae.commands import COMMANDS
from consistency_vae.errors import UserError

if TYPE_CHECKING:  # at run time, module __getattr__ below imports them when asked for
    from consistency_vae.training_cli import ConsistencyCLI, lightning_cli

__all__ = ["ConsistencyCLI", "cli_main", "error_line", "lightning_cli"]
LIGHTNING_COMMANDS = tuple(cli_help.LIGHTNING_HELP)  # fit, validate, test, predict


def __getattr__(name: str):
    """``ConsistencyCLI`` and ``lightning_cli``, imported (with Lightning) when first asked for."""
    if name in ("ConsistencyCLI", "lightning_cli"):
        from consistency_vae import training_cli

        return getattr(training_cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def error_line(err: Exception) -> str:
    """What every command prints for a user mistake (exit code 1): the error's own message, which
    names the bad value and the fix."""
    return f"consistency-vae: error: {err}"


def _user_mistakes() -> tuple[type[Exception], ...]:
    """UserError, and NonFiniteLossError if guards.py (torch) is loaded: a command that never
    imported it cannot have raised it, and looking it up must not import torch."""
    guards = sys.modules.get("consistency_vae.guards")
    return (UserError,) if guards is None else (UserError, guards.NonFiniteLossError)


def cli_main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    extra = COMMANDS
    if argv and argv[0] in extra:
        try:
            return extra[argv[0]](argv[1:])
        except _user_mistakes() as err:  # a user mistake: one line, no traceback
            sys.exit(error_line(err))
    if not argv or argv[0] in ("-h", "--help", *cli_help.FULL_HELP_FLAGS):
        print(cli_help.top_help(extra))
        return
    if argv[0] not in LIGHTNING_COMMANDS and not argv[0].startswith("-"):
        sys.exit(cli_help.unknown_command(argv[0], [*LIGHTNING_COMMANDS, *extra]))
    _lightning_main(argv, args)


def _lightning_main(argv: list[str], args: list[str] | None) -> None:
    """fit/validate/test/predict through LightningCLI (training_cli.py)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from consistency_vae import cli_checks
    from consistency_vae.quiet import quiet_libraries
    from consistency_vae.tracking import finish_wandb_run
    from consistency_vae.training_cli import lightning_cli

    quiet_libraries()  # the libraries' tips, deprecations and W&B's console output
    try:
        lightning_cli(None if args is None else argv)
    except _user_mistakes() as err:
        sys.exit(error_line(err))
    except Exception as err:  # a library's refusal that is really a configuration error
        if (message := cli_checks.describe_library_error(err)) is None:
            raise
        sys.exit(f"consistency-vae: error: {message}")
    except SIGTERMException:  # Lightning stopped at a batch boundary; the checkpoint callback saved
        print(f"consistency-vae: stopped by SIGTERM; {cli_help.resume_hint(argv)}", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)  # the shell's code for "terminated by SIGTERM", not success
    finally:
        finish_wandb_run()  # one W&B run per command, also when commands share a process
