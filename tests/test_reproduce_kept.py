"""A reproduction in pieces: `reproduce` with an --output whose summary.json an earlier reproduction
wrote keeps its run records (kept.py) and trains only the grid points without one, as on a new
machine where the run folders are gone; and refuses, before any work, records evaluated otherwise."""

import json
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from consistency_vae.errors import ConfigError, UserError
from consistency_vae.reproduction import kept, reproduce
from consistency_vae.reproduction.runs import Run
from consistency_vae.sweep import command as sweep_command
from tests.reproduce_quick import summary_of

COMPARED = ("results", "claims", "front", "constrained", "sweep", "recommendation")


def continued(quick: dict, tmp_path: Path, *flags: str) -> list[str]:
    """The quick reproduction's command with its output copied to ``tmp_path``/results and a new,
    empty runs folder (another machine), plus ``flags``."""
    shutil.copytree(quick["root"] / "results", tmp_path / "results")
    argv = quick["argv"].copy()
    argv[argv.index("--output") + 1] = str(tmp_path / "results")
    argv[argv.index("--runs_dir") + 1] = str(tmp_path / "runs")
    return [*argv, *flags]


@pytest.mark.slow
def test_every_run_recorded_in_the_output_is_kept_on_a_machine_without_its_folders(quick, tmp_path, capsys):
    reproduce.main(continued(quick, tmp_path))
    out = capsys.readouterr().out
    assert "reproduce: 0 runs to train" in out and "8 runs are kept from" in out
    assert "from 8 runs (8 kept from its summary.json)" in out
    assert not list((tmp_path / "runs").glob("*/version_*"))  # nothing trained
    ours, before = summary_of(tmp_path / "results"), summary_of(quick["root"] / "results")
    assert {k: ours[k] for k in COMPARED} == {k: before[k] for k in COMPARED}
    assert ours["runs"] == before["runs"]  # the same records, in the same order


@pytest.mark.slow
def test_only_the_runs_without_a_record_are_trained(quick, tmp_path, capsys):
    argv = continued(quick, tmp_path)
    summary = summary_of(tmp_path / "results")
    dropped = next(r for r in summary["runs"] if r["name"] == "mnist_alpha3.0_seed1")
    summary["runs"].remove(dropped)
    (tmp_path / "results/summary.json").write_text(json.dumps(summary))
    reproduce.main(argv)
    out = capsys.readouterr().out
    assert "reproduce: 1 runs to train" in out and "7 runs are kept from" in out
    (trained,) = (tmp_path / "runs").glob("*/version_*")
    assert trained.parent.name == "mnist_alpha3.0_seed1"
    runs = summary_of(tmp_path / "results")["runs"]
    assert [r["name"] for r in runs] == [r["name"] for r in summary_of(quick["root"] / "results")["runs"]]
    again = next(r for r in runs if r["name"] == "mnist_alpha3.0_seed1")
    assert again["folder"] == str(trained) and again["key"] == dropped["key"]


@pytest.mark.slow
def test_records_evaluated_otherwise_stop_the_command_before_any_work(quick, tmp_path):
    argv = continued(quick, tmp_path)
    argv[argv.index("--iwae_k") + 1] = "7"
    with pytest.raises(UserError, match=r"holds 8 runs of an earlier reproduction, evaluated otherwise "
                                        r"\(--iwae_k 5 there, 7 here\): give the same flags"):
        reproduce.main(argv)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_records_of_another_length_of_training_stop_the_command_before_any_work(quick, tmp_path):
    argv = continued(quick, tmp_path)
    argv[argv.index("--epochs") + 1] = "3"
    with pytest.raises(UserError, match=r"holds runs of an earlier reproduction trained with other options "
                                        r"\(--trainer.max_epochs=2 --data.subset=1000.* there, "
                                        r"--trainer.max_epochs=3 --data.subset=1000.* here"):
        reproduce.main(argv)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_runs_that_another_piece_recorded_meanwhile_are_kept(quick, tmp_path, monkeypatch, capsys):
    """Two pieces into one --output end at about the same time: this one reads the records again
    before it writes, so the other piece's run (seed 2, outside this piece's --seeds 2) stays."""
    argv = continued(quick, tmp_path)
    path = tmp_path / "results/summary.json"
    summary = json.loads(path.read_text())
    mine = next(r for r in summary["runs"] if r["name"] == "mnist_alpha3.0_seed1")
    summary["runs"].remove(mine)
    path.write_text(json.dumps(summary))
    key = json.loads(mine["key"])
    key["params"]["seed_everything"] = 2
    theirs = {**mine, "name": "mnist_alpha3.0_seed2", "seed": 2, "key": json.dumps(key, sort_keys=True)}
    evaluate_all = reproduce.evaluate_all

    def the_other_piece_ends_meanwhile(*args, **kwargs):
        results = evaluate_all(*args, **kwargs)
        path.write_text(json.dumps({**summary, "runs": [*summary["runs"], theirs]}))
        return results

    monkeypatch.setattr(reproduce, "evaluate_all", the_other_piece_ends_meanwhile)
    reproduce.main(argv)
    assert "reproduce: 1 runs to train" in capsys.readouterr().out
    names = [r["name"] for r in summary_of(tmp_path / "results")["runs"]]
    assert "mnist_alpha3.0_seed2" in names and "mnist_alpha3.0_seed1" in names and len(names) == 9


def test_the_summary_is_written_by_one_piece_at_a_time(tmp_path):
    """A second process holds the output's lock, then writes a marker and ends: this one enters
    ``kept.writing`` only after that."""
    hold = ("import fcntl, pathlib, sys, time; lock = open(sys.argv[1], 'w'); "
            "fcntl.flock(lock, fcntl.LOCK_EX); print('held', flush=True); time.sleep(1); "
            "pathlib.Path(sys.argv[2]).write_text('done')")
    marker = tmp_path / "the other piece wrote"
    other = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / kept.LOCK), str(marker)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "held\n"
        with kept.writing(tmp_path):
            assert marker.read_text() == "done"
    finally:
        other.kill()
        other.wait(timeout=30)


ARGS = Namespace(iwae_k=5, iwae_images=50, gap_images=10, quadrature_points=101)


def write_summary(folder: Path, runs: list, **config) -> Path:
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"config": {**kept.evaluation(ARGS), **config},
                                                      "runs": runs}))
    return folder


def test_summaries_without_sweep_keys_keep_nothing(tmp_path):
    """No summary.json, or one of gathered folders (--from-runs) or of an older version (records
    without a key): nothing is kept, whatever its flags."""
    assert kept.records(tmp_path / "absent", ARGS, []) == {}
    older = write_summary(tmp_path / "older", [{"name": "a", "key": None}], iwae_k=1000)
    assert kept.records(older, ARGS, []) == {}


def test_a_broken_summary_names_the_file_and_the_fix(tmp_path):
    (tmp_path / "summary.json").write_text('{"config": {}, "ru')
    with pytest.raises(UserError, match=r"summary.json is not a summary.json that reproduce wrote "
                                        r"\(JSONDecodeError.*move it away, or give another --output"):
        kept.records(tmp_path, ARGS, [])


def test_this_commands_record_of_a_run_replaces_the_kept_one():
    old = {"a": {"key": "a", "elbo": -1.0}, "b": {"key": "b", "elbo": -2.0}}
    assert kept.merged(old, [{"key": "b", "elbo": -3.0}]) == [{"key": "a", "elbo": -1.0},
                                                               {"key": "b", "elbo": -3.0}]


def test_the_same_flags_pick_gathered_run_folders(tmp_path):
    """--from-runs DIR with --datasets, --latent_dims, --seeds: the same runs as on the grid."""
    runs = []
    for dataset, dim, seed in [("mnist", 2, 0), ("mnist", 20, 0), ("fashion_mnist", 2, 0), ("mnist", 2, 3)]:
        folder = tmp_path / f"{dataset}_{dim}_{seed}"
        folder.mkdir()
        (folder / "config.yaml").write_text(
            f"seed_everything: {seed}\ndata: {{dataset: {dataset}}}\ntrainer: {{max_epochs: 25}}\n"
            f"model: {{latent_dim: {dim}, alpha: 1.0}}\n")
        runs.append(Run.from_folder(folder))
    parse = reproduce.make_parser().parse_args
    assert reproduce.picked(runs, parse([])) == runs
    assert reproduce.picked(runs, parse(["--datasets", "mnist", "--latent_dims", "2"])) == [runs[0], runs[3]]
    assert reproduce.picked(runs, parse(["--latent_dims", "2", "--seeds", "1"])) == [runs[0], runs[2]]


def test_latent_dims_pick_the_grid_points():
    args = reproduce.make_parser().parse_args(["--datasets", "mnist", "--latent_dims", "2"])
    assert reproduce.sweep_arguments(args) == ([], {"data.dataset": ["mnist"], "model.latent_dim": [2]})


@pytest.mark.parametrize("flags", [["--from-runs", "gathered"], ["--from-summary", "other/summary.json"]])
def test_records_of_pieces_are_never_replaced_by_other_records(tmp_path, flags, monkeypatch):
    """--from-runs, or --from-summary of another file, into an --output that holds a reproduction in
    pieces: stopped before any work, its summary.json as it was."""
    monkeypatch.chdir(tmp_path)
    output = write_summary(tmp_path / "pieces", [{"name": "a", "key": '{"params": {}}'}])
    before = (output / "summary.json").read_text()
    write_summary(tmp_path / "other", [])
    (tmp_path / "gathered").mkdir()
    with pytest.raises(UserError, match=r"--output .*pieces holds the records of 1 runs of a reproduction in "
                                        rf"pieces .*; {flags[0]} {flags[1]} would replace them with others: "
                                        r"give another --output, or move its summary.json away first"):
        reproduce.main([*flags, "--output", str(output)])
    assert (output / "summary.json").read_text() == before
    if flags[0] == "--from-runs":  # another --output is the way to go
        with pytest.raises(UserError, match="--from-runs gathered: no run folder"):
            reproduce.main([*flags, "--output", "elsewhere"])


SWEEPS = [str(Path(__file__).resolve().parents[1] / "sweeps" / "reproduce_claims.yaml")]


@pytest.mark.parametrize(("flags", "message"), [
    (["--latent_dims", "3"], r"--latent_dims 3: no grid point of .*claims.yaml has it; they have 2 20"),
    (["--latent_dims", "2", "3"], r"--latent_dims 3: no grid point"),  # not the 2-D runs alone
    (["--datasets", "images"], r"--datasets images: no grid point .* they have fashion_mnist mnist"),
    (["--seeds", "0"], r"--seeds 0: give N >= 1, the first N seeds of each group"),  # not "all seeds"
    (["--seeds", "-1", "--from-runs", "gathered"], r"--seeds -1: give N >= 1"),
    # each was refused only after the training, or trained otherwise than asked, or crashed:
    (["--iwae_k", "0"], r"--iwae_k 0: give a whole number >= 1 \(--iwae_images 0: all"),
    (["--gap_images", "-1", "--iwae_images", "-5"], r"--gap_images -1, --iwae_images -5: give"),
    (["--epochs", "0"], r"--epochs 0: give a whole number >= 1 .* leave --epochs and --subset out"),
    (["--subset", "0"], r"--subset 0: give"),  # it trained on all the data
    (["--subset", "-4"], r"--subset -4: give"),  # every run failed on it
    (["--parallel", "0"], r"--parallel 0: give"),  # ZeroDivisionError
])
def test_bad_picks_and_counts_stop_the_command_before_any_work(tmp_path, flags, message):
    argv = [*flags, "--sweeps", *SWEEPS, "--output", str(tmp_path / "out"), "--runs_dir",
            str(tmp_path / "runs")]
    with pytest.raises(ConfigError, match=message):
        reproduce.main(argv)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["reproduce", "sweep"])
def test_a_run_from_outside_the_project_stops_before_any_run(tmp_path, monkeypatch, command):
    """The sweep files' commands name configs/mnist.yaml relative to where the runs start: from
    another folder every run would fail on it, one log each. Both commands stop first, saying so."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    with pytest.raises(ConfigError, match=r"File does not exist: .*configs/mnist.yaml.*relative to where the "
                                          rf"runs start, here {tmp_path}: run it from the project's root"):
        if command == "reproduce":
            reproduce.main(["--sweeps", *SWEEPS, "--output", str(tmp_path / "out"), "--runs_dir", str(runs)])
        else:
            sweep_command.main([SWEEPS[0], "--runs_dir", str(runs)])
    assert not runs.exists() and not (tmp_path / "out").exists()
