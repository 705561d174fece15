"""Help that fits on a screen (issue 11, section 3): the keys a user of this project changes, with
their values; LightningCLI's full help behind --help=all; defaults in the project commands' help."""

import re

import pytest

from consistency_vae.cli import cli_main
from consistency_vae.commands import COMMANDS
from tests.cli_runs import BASE

SHOWN = ["--config", "--print_config", "--ckpt_path", "--model.alpha", "--model.latent_dim",
         "--model.encoder", "--data.dataset", "--data.data_dir", "--data.batch_size", "--data.subset",
         "--trainer.max_epochs", "--trainer.logger", "--trainer.callbacks"]


def printed_help(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli_main(list(args))
    assert exit_.value.code in (0, None)
    return capsys.readouterr().out


def option_line(text: str, key: str) -> str:
    """The help of one option, its continuation lines joined."""
    match = re.search(rf"^  {re.escape(key)} .*(\n {{3,}}[^ -].*)*", text, re.MULTILINE)
    assert match, f"{key} not in the help"
    return " ".join(match.group(0).split())


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict"])
def test_subcommand_help_fits_on_a_screen_and_shows_the_project_keys(capsys, command):
    text = printed_help(capsys, command, "--help")
    assert len(text.splitlines()) < 150
    for key in SHOWN:
        option_line(text, key)
    assert "torch.nn.Linear" not in text and f"consistency-vae {command} --help=all" in text
    assert "[1.0]" in option_line(text, "--model.alpha") and "[128]" in option_line(text, "--data.batch_size")


def test_help_after_a_config_shows_the_values_it_sets(capsys):
    text = printed_help(capsys, "fit", "--config", BASE, "--model.alpha=3", "--help")
    assert "[25]" in option_line(text, "--trainer.max_epochs")
    assert "[3.0]" in option_line(text, "--model.alpha")
    assert "CSVLogger" in option_line(text, "--trainer.logger")
    assert "AtomicModelCheckpoint" in option_line(text, "--trainer.callbacks")
    assert "MLPEncoder(hidden_dims=[400], activation=relu)" in option_line(text, "--model.encoder")
    assert "{mnist,fashion_mnist,images}" in text  # the dataset registry's names


def test_help_all_is_lightnings_full_help(capsys):
    text = printed_help(capsys, "fit", "--help=all")
    assert len(text.splitlines()) > 1000 and "--trainer.gradient_clip_val" in text


def test_top_level_help_lists_every_command(capsys):
    cli_main(["--help"])
    text = capsys.readouterr().out
    for name in ["fit", "validate", "test", "predict", *COMMANDS]:
        assert re.search(rf"^  {re.escape(name)} +\S", text, re.MULTILINE), name
    assert len(text.splitlines()) < 40


# (command, an option, its default as --help must show it)
DEFAULTS = [("data", "--dataset", "all"), ("data", "--data_dir", "data"),
            ("evaluate", "--iwae_k", "1000"), ("evaluate", "--device", "auto"),
            ("sweep", "--parallel", "1"), ("sweep", "--runs_dir", "runs"),
            ("sweep-report", "--output", "results"), ("reproduce", "--parallel", "2"),
            ("reproduce", "--output", "results"), ("bench", "--epochs", "3")]


@pytest.mark.parametrize("command, option, default", DEFAULTS, ids=[f"{c}{o}" for c, o, _ in DEFAULTS])
def test_project_commands_show_their_defaults(capsys, command, option, default):
    text = printed_help(capsys, command, "--help")
    # argparse commands print "(default: X)", jsonargparse ones "(type: T, default: X)"
    assert re.search(rf"[(,] ?default: {re.escape(default)}\)", option_line(text, option))


def test_an_unknown_command_is_one_line_naming_the_commands():
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fti"])
    message = str(exit_.value.code)
    assert message.startswith("consistency-vae: error: unknown command 'fti': did you mean 'fit'?")
    assert all(name in message for name in ["predict", *COMMANDS]) and "\n" not in message


@pytest.mark.parametrize("argv, meant", [
    (["fit", "--config", BASE, "--trainer.max_epoch=2"], "--trainer.max_epochs"),
    (["validate", "--config", BASE, "--model.alph=3"], "--model.alpha"),
    (["runs", "--cs"], "--csv"),
    (["data", "--datase", "mnist"], "--dataset"),
    (["sweep", "sweeps/alpha_mnist.yaml", "--paral", "2"], "--parallel"),
    (["evaluate", "--ckpt", "x.ckpt"], "--ckpt_path"),
])
def test_an_abbreviated_flag_is_refused_with_did_you_mean(capsys, argv, meant):
    # argparse's prefix matching once trained `fit --trainer.max_epoch=2` for 2 epochs, silently
    with pytest.raises(SystemExit) as exit_:
        cli_main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"did you mean {meant}?" in err
    assert err.rstrip().splitlines()[-1].startswith("error: unrecognized arguments: ")
