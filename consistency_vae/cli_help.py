"""Help that fits on a screen, and parse errors that end with the error.

LightningCLI's ``fit --help`` is ~1,900 lines: every Trainer option, and the name of every
``torch.nn`` class (the encoder's type is ``nn.Module``). ``subcommand_help`` shows what a user of
this project changes (model.*, data.*, a few trainer keys, the config options) with the values
that the given ``--config`` files and flags lead to; ``--help=all`` (or ``--help-all``) prints
LightningCLI's full help. ``ProjectParser.error`` prints a short usage, the help line of the key at
fault, and the error last, where jsonargparse prints 66 lines of usage above it.

Every command imports this module, so it imports neither Lightning nor torch (seconds each):
``ProjectParser``, the one class that needs Lightning, is built when training_cli first asks for it.
"""

import difflib
import re
import sys
import textwrap

from jsonargparse import ArgumentParser, Namespace  # ~0.1 s; Lightning, below, takes seconds

HELP_FLAGS = ("-h", "--help")
FULL_HELP_FLAGS = ("--help=all", "--help-all")
# Trainer keys a user of this project changes; the other ~70 are in --help=all.
TRAINER_KEYS = ("trainer.max_epochs", "trainer.accelerator", "trainer.devices",
                "trainer.default_root_dir", "trainer.logger", "trainer.callbacks")
OTHER_KEYS = ("config", "print_config", "seed_everything", "ckpt_path", "wandb", "threads")
KEY_WIDTH, WIDTH = 34, 100


def wants_short_help(argv: list[str]) -> bool:
    return any(a in HELP_FLAGS for a in argv) and not any(a in FULL_HELP_FLAGS for a in argv)


def config_files(argv: list[str]) -> list[str]:
    """The files of ``--config FILE``, ``--config=FILE`` and ``-c FILE``, in order."""
    return [a.split("=", 1)[1] if a.startswith("--config=") else argv[i + 1]
            for i, a in enumerate(argv)
            if a.startswith("--config=") or (a in ("--config", "-c") and i + 1 < len(argv))]


def full_help_argv(argv: list[str]) -> list[str]:
    """``--help=all`` / ``--help-all`` -> LightningCLI's own ``--help``."""
    return ["--help" if a in FULL_HELP_FLAGS else a for a in argv]


def _shown(action) -> bool:
    dest = action.dest
    if dest.endswith(".help") or dest in ("model", "data", "help"):
        return False
    return dest.startswith(("model.", "data.")) or dest in TRAINER_KEYS or dest in OTHER_KEYS


def _short_value(value) -> str:
    """A config value in a few characters: a class as its name and init_args, lists item by item."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, list):
        return "[" + ", ".join(_short_value(v) for v in value) + "]" if value else "[]"
    if isinstance(value, dict) and "class_path" in value:
        args = value.get("init_args") or {}
        inner = ", ".join(f"{k}={v}" for k, v in args.items() if v is not None)
        name = str(value["class_path"]).rsplit(".", 1)[-1]
        return f"{name}({inner})" if len(inner) < 40 else f"{name}(...)"
    return "null" if value is None else str(value)


def _first_sentence(text: str | None) -> str:
    text = " ".join((text or "").replace("``", "").split())
    text = re.sub(r"\s*\((type|default): .*$", "", text)  # jsonargparse's own suffix, if any
    match = re.match(r"(.+?\.)(\s|$)", text)
    return (match.group(1) if match else text)[:150]


def _invocation(action) -> str:
    name = next(o for o in action.option_strings if o.startswith("--") and not o.endswith("+"))
    if action.dest == "print_config":
        return name
    choices = action.choices or getattr(getattr(action, "_typehint", None), "__args__", None)
    if action.dest == "data.dataset":  # a str checked against the registry, which modules extend
        from consistency_vae.datasets import list_datasets

        choices = list_datasets()
    if choices and all(isinstance(c, str) for c in choices):  # a Literal: its values
        return f"{name} {{{','.join(choices)}}}"
    return f"{name} {action.dest.rsplit('.', 1)[-1].upper()}"


def _line(action, value=None, show_value: bool = True) -> str:
    """One option: its flag, the first sentence of its help, and its value."""
    text = _first_sentence(action.help)
    if show_value:
        text += f" [{_short_value(value)}]"
    key = f"  {_invocation(action)}"
    lines = textwrap.wrap(text, WIDTH - KEY_WIDTH) or [""]
    first = f"{key:<{KEY_WIDTH}}{lines[0]}" if len(key) < KEY_WIDTH else f"{key}\n{'':<{KEY_WIDTH}}{lines[0]}"
    return "\n".join([first] + [f"{'':<{KEY_WIDTH}}{rest}" for rest in lines[1:]])


def subcommand_help(parser, config: Namespace, prog: str, configs_given: bool) -> str:
    """The short help of one subcommand; ``config`` is the parse of the command line minus --help."""
    groups = {"Config": [], "Model (--model.KEY)": [], "Data (--data.KEY)": [],
              "Trainer (a few of its keys; --help=all lists them all)": []}
    titles = list(groups)
    for action in parser._actions:
        if not any(o.startswith("--") for o in action.option_strings) or not _shown(action):
            # (and a link such as data.image_shape --> model.image_shape: not an option)
            continue
        dest = action.dest
        group = (titles[1] if dest.startswith("model.") else titles[2] if dest.startswith("data.")
                 else titles[3] if dest.startswith("trainer.") else titles[0])
        no_value = dest in ("config", "print_config")
        groups[group].append(_line(action, None if no_value else config.get(dest), not no_value))
    where = ("the given --config files and flags" if configs_given else
             "the code (no --config given: put --config configs/mnist.yaml before --help to see the "
             "project's settings)")
    out = [f"usage: {prog} [--config FILE ...] [--KEY VALUE ...]", "",
           *textwrap.wrap(f"Values in [brackets] are those of {where}.", WIDTH), ""]
    for title, lines in groups.items():
        if lines:
            out += [f"{title}:", *lines, ""]
    out += ["Encoders, decoders, loggers and callbacks are classes: --model.encoder.help MLPEncoder "
            "lists the arguments of one.",
            f"Every Lightning option (about 1,900 lines): {prog} --help=all"]
    return "\n".join(out)


def _key_of(message: str) -> str | None:
    """The key an error is about, from jsonargparse's wording."""
    for pattern in (r'[Kk]ey "([^"]+)"', r"Unrecognized arguments: --([\w.]+)", r"--([\w.]+)"):
        if found := re.search(pattern, message):
            return found.group(1)
    return None


class _ShortErrors:
    """A parse error that ends with the error, after a short usage and a "did you mean".

    No abbreviations: argparse would take ``--trainer.max_epoch=2`` for ``--trainer.max_epochs``
    silently; refused, it gets the "did you mean" of any other unknown key."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        from jsonargparse._common import debug_mode_active

        if not self.exit_on_error or debug_mode_active():
            return super().error(message, ex)  # raises: jsonargparse handles it itself
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        if getattr(parser, "_subcommands_action", None) is not None:  # the top level: no command
            hint = [f"usage: {prog} COMMAND [options]   ({prog} --help lists the commands)"]
        elif _is_lightning_parser(parser):
            hint = [f"usage: {prog} [--config FILE ...] [--KEY VALUE ...]   ({prog} --help lists the keys)"]
        else:  # a project command
            hint = [f"usage: {prog} [options]   ({prog} --help lists the options)"]
        actions = {a.dest: a for a in parser._actions if a.option_strings}
        key = _key_of(message)
        if key and key not in actions:
            close = difflib.get_close_matches(key, list(actions), n=1)
            if close:
                hint.append(f"did you mean --{close[0]}?")
            key = close[0] if close else None
        if key and key in actions:
            hint.append(_line(actions[key], show_value=False))
        one_line = " ".join(message.split())
        sys.stderr.write("\n".join(hint) + f"\nerror: {one_line}\n")
        self.exit(2)


def _is_lightning_parser(parser) -> bool:
    """Whether ``parser`` is LightningCLI's; without importing Lightning, which a project command
    never loaded (and then none of its parsers can be Lightning's)."""
    cli = sys.modules.get("lightning.pytorch.cli")
    return cli is not None and isinstance(parser, cli.LightningArgumentParser)


_lightning_parser: list[type] = []  # ProjectParser, once built


def __getattr__(name: str):
    """``ProjectParser``: LightningCLI's parser with short parse errors (_ShortErrors), built on
    first use so that importing this module does not import Lightning."""
    if name != "ProjectParser":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not _lightning_parser:
        from lightning.pytorch.cli import LightningArgumentParser

        _lightning_parser.append(type("ProjectParser", (_ShortErrors, LightningArgumentParser), {
            "__doc__": "LightningCLI's parser, with short parse errors (_ShortErrors).",
            "__module__": __name__}))
    return _lightning_parser[0]


class CommandParser(_ShortErrors, ArgumentParser):
    """A project command's parser (data, sweep, evaluate...): jsonargparse's, as LightningCLI's for
    fit, so ``--help`` shows each option's type and default; short parse errors (_ShortErrors)."""


LIGHTNING_HELP = {
    "fit": "train: consistency-vae fit --config configs/mnist.yaml [--model.alpha=3]",
    "validate": "the validation metrics of a checkpoint (--ckpt_path), into its run folder",
    "test": "the test metrics of a checkpoint (--ckpt_path), into its run folder",
    "predict": "posterior means, log-variances and labels of a split, into the checkpoint's run folder",
}


def top_help(commands: dict) -> str:
    """``consistency-vae --help``: every command in one line each."""
    lines = ["usage: consistency-vae COMMAND [options]", "",
             "Training and evaluation (LightningCLI: YAML configs plus --KEY VALUE flags):"]
    lines += [f"  {name:<14}{text}" for name, text in LIGHTNING_HELP.items()]
    lines += ["", "Project commands:"]
    for name, fn in commands.items():
        doc = (fn.__doc__ or "").strip().split("\n")[0]
        lines.append(f"  {name:<14}{doc.split(': ', 1)[-1]}")
    lines += ["", "consistency-vae COMMAND --help shows a command's options with their defaults; "
              "consistency-vae fit --help=all, every Lightning option."]
    return "\n".join(lines)


def resume_hint(argv: list[str]) -> str:
    """How to continue a stopped fit, from its own command line: a run started with
    ``--ckpt_path last`` already has it; one started from a file would restart from that file."""
    given = next((a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
                  for i, a in enumerate(argv) if a.split("=", 1)[0] == "--ckpt_path"), None)
    if given == "last":
        return "continue with the same command (its --ckpt_path last)"
    if given:
        return f"continue with the same command, --ckpt_path last in place of --ckpt_path {given}"
    return "continue with the same command plus --ckpt_path last"


def unknown_command(name: str, commands: list[str]) -> str:
    close = difflib.get_close_matches(name, commands, n=1)
    guess = f"did you mean '{close[0]}'? " if close else ""
    return (f"consistency-vae: error: unknown command {name!r}: {guess}the commands are "
            f"{', '.join(commands)} (consistency-vae --help says what each does)")


def command_parser(prog: str, description: str) -> CommandParser:
    """The parser of a project command."""
    return CommandParser(prog=prog, description=description)


def add_data_overrides(parser, whose: str, path_whose: str) -> None:
    """``--data.dataset/path/data_dir/subset``: what a command that reads checkpoints (evaluate,
    compare) may change of their data config; ``whose``: "the checkpoint's", ...; ``path_whose``:
    whose ``data.path`` the flag replaces."""
    parser.add_argument("--data.dataset", type=str | None, default=None,
                        help=f"override {whose} dataset: a name of the dataset registry (datasets.py)")
    parser.add_argument("--data.path", type=str | None, default=None,
                        help=f"override {path_whose} data.path (your own images)")
    parser.add_argument("--data.data_dir", type=str | None, default=None,
                        help=f"override {whose} data folder")
    parser.add_argument("--data.subset", type=int | None, default=None, help="first N images of each split")
