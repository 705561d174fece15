"""`consistency-vae runs`: one row per run folder, read from the folder's own files."""

import csv
import io
import json

import pytest
import torch
import yaml

from consistency_vae.cli import cli_main


def make_run(folder, *, alpha=1.0, mode="fixed", kl_target=1.0, latent_dim=2, seed=0, max_epochs=3,
             done=3, status=None, rows=()):
    (folder / "checkpoints").mkdir(parents=True)
    config = {"seed_everything": seed, "trainer": {"max_epochs": max_epochs},
              "model": {"alpha": alpha, "alpha_mode": mode, "kl_target": kl_target, "latent_dim": latent_dim},
              "data": {"dataset": "mnist"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    loops = {"fit_loop": {"epoch_progress": {"current": {"processed": done}}}}
    torch.save({"epoch": done - 1, "global_step": 7 * done, "loops": loops}, folder / "checkpoints/last.ckpt")
    if status:
        (folder / "status.json").write_text(json.dumps({"status": status, "epochs_done": done}))
    keys = sorted({k for r in rows for k in r})
    with (folder / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def runs_dir(tmp_path):
    per_epoch = [{"epoch": e, "step": 7 * e + 6, "test/elbo": -100.0 + e,
                  "test/kl_consistency": 1.0 / (e + 1)} for e in range(3)]
    final = {"epoch": 3, "step": 21, "test/elbo": -101.5, "test/kl_consistency": 0.75, "test/loss": 102.0}
    make_run(tmp_path / "mnist_alpha1.0_seed0/version_0", status="finished", rows=[*per_epoch, final])
    make_run(tmp_path / "mnist_alpha0.0_seed1/version_0", alpha=0.0, seed=1, done=1, status="interrupted",
             rows=per_epoch[:1])
    make_run(tmp_path / "mnist_z20_constrained_kl1.5_alpha1.0_seed0/version_2", mode="constrained",
             kl_target=1.5, latent_dim=20, done=2, status="failed", rows=per_epoch[:2])
    (tmp_path / "wandb/offline-run-x/files").mkdir(parents=True)  # W&B's own config.yaml: not a run
    (tmp_path / "wandb/offline-run-x/files/config.yaml").write_text("a: 1\n")
    return tmp_path


def test_table_lists_setting_progress_status_and_test_numbers(runs_dir, capsys):
    cli_main(["runs", str(runs_dir)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and "status" in lines[0] and "KL(z'||z) best" in lines[0]
    by_run = {line.split()[0]: line.split() for line in lines[1:]}
    finished = by_run["mnist_alpha1.0_seed0/version_0"]
    assert finished[1:] == ["mnist", "alpha", "1", "2", "0", "3/3", "finished", "-101.50", "-98.00",
                            "0.750", "0.333"]
    assert by_run["mnist_alpha0.0_seed1/version_0"][6:9] == ["1/3", "interrupted", "-"]
    constrained = by_run["mnist_z20_constrained_kl1.5_alpha1.0_seed0/version_2"]
    assert constrained[2:8] == ["eps", "1.5", "20", "0", "2/3", "failed"]


def test_csv_has_the_same_rows(runs_dir, capsys, tmp_path):
    cli_main(["runs", str(runs_dir), "--csv"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["run"] for r in rows] == ["mnist_alpha0.0_seed1/version_0", "mnist_alpha1.0_seed0/version_0",
                                        "mnist_z20_constrained_kl1.5_alpha1.0_seed0/version_2"]
    assert rows[1]["best_test_elbo"] == "-101.5" and rows[1]["last_test_kl_consistency"] == str(1 / 3)
    assert rows[0]["best_test_elbo"] == "" and rows[2]["epsilon"] == "1.5" and rows[1]["epsilon"] == ""
    cli_main(["runs", str(runs_dir), "--csv", str(tmp_path / "out.csv")])
    assert list(csv.DictReader((tmp_path / "out.csv").open())) == rows


def test_help_shows_defaults_and_a_missing_folder_says_what_to_give(capsys):
    with pytest.raises(SystemExit):
        cli_main(["runs", "--help"])
    assert "(default: runs)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["runs", "no/such/folder"])
    assert "no/such/folder is not a folder" in str(exit_info.value.code)
