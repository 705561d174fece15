"""W&B tracking: offline without credentials, the resolved config uploaded, metrics and images kept.

wandb 0.31 ships no Python reader of its ``.wandb`` transaction log (``wandb.sdk.internal.datastore``
is gone), so ``wandb_records`` reads the LevelDB-style log format it is written in and parses each
record with wandb's own protobuf, ``wandb.proto.wandb_internal_pb2.Record``.
"""

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from consistency_vae import tracking
from consistency_vae.cli import cli_main
from consistency_vae.tracking import ensure_wandb_mode
from tests.cli_runs import ENV
from tests.conftest import ROOT

BASE = str(ROOT / "configs/mnist.yaml")
TINY = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2", "--trainer.enable_progress_bar=false"]
BLOCK, HEADER = 32768, 7  # LevelDB log: 32 KiB blocks; a record header is crc32c(4) length(2) type(1)


def wandb_records(path: Path):
    """Yield (kind, record) for every record of a ``run-ID.wandb`` file."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, pending = 7, b""  # file header: ':W&B', magic (2 bytes), version (1 byte)
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        pending += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):  # FULL, or LAST of FIRST/MIDDLE.../LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record.WhichOneof("record_type"), record


def _nest(items) -> dict:
    """History/summary items -> a dict; an item keyed ["figures/x", "_type"] lands in out["figures/x"]."""
    out: dict = {}
    for item in items:
        *parents, leaf = [item.key] if item.key else list(item.nested_key)
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = json.loads(item.value_json)
    return out


def read_offline_run(run_dir: Path) -> dict:
    """Run record, config, history rows and the final summary of one offline run."""
    (log,) = run_dir.glob("run-*.wandb")
    out = {"run": None, "config": {}, "history": [], "summary": {}}
    for kind, record in wandb_records(log):
        if kind == "run":
            out["run"] = record.run
        elif kind == "config":
            out["config"].update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            out["history"].append(_nest(record.history.item))
        elif kind == "summary":
            out["summary"].update(_nest(record.summary.update))
    return out


@pytest.fixture(autouse=True)
def fresh_wandb(monkeypatch):
    """No wandb state crosses tests: settings, login, and the service whose address wandb.setup
    writes into os.environ (WANDB_SERVICE), where child processes would find and reuse it."""
    import wandb

    monkeypatch.setenv("WANDB_SERVICE", "")  # so that monkeypatch removes it again at the end
    monkeypatch.delenv("WANDB_SERVICE")
    wandb.teardown()
    yield
    wandb.teardown()


# --- no credentials: offline ----------------------------------------------------------------------
@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """A user with no W&B login: no API key, no netrc, no settings, and no WANDB_MODE."""
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / ".config/wandb"))
    return tmp_path


def test_no_credentials_and_no_mode_means_offline_with_one_line(no_credentials, capsys):
    assert ensure_wandb_mode() == "offline"
    assert os.environ["WANDB_MODE"] == "offline"
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "offline" in message and "wandb sync" in message


def test_a_typo_in_a_flag_gets_its_error_alone_and_the_notice_comes_after_parsing(no_credentials, capsys,
                                                                                   data_dir):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", BASE, "--model.alpah=3"])
    err = capsys.readouterr().err
    assert "alpah" in err and "W&B" not in err and "WANDB_MODE" not in os.environ
    from consistency_vae.training_cli import lightning_cli  # parsed and set up, not run

    lightning_cli(["--config", BASE, f"--data.data_dir={data_dir}"], run=False)
    assert os.environ["WANDB_MODE"] == "offline" and "logging to W&B offline" in capsys.readouterr().err


@pytest.mark.parametrize("setting", ["mode", "api_key", "netrc"])
def test_a_chosen_mode_or_any_credential_is_left_alone(no_credentials, monkeypatch, capsys, setting):
    key = "0123456789abcdef0123456789abcdef01234567"  # the 40-character shape of an API key
    # the W&B server answers (unreachable is test_reliability's case): only credentials matter here
    monkeypatch.setattr("consistency_vae.tracking._reachable", lambda url: True)
    if setting == "mode":
        monkeypatch.setenv("WANDB_MODE", "disabled")
    elif setting == "api_key":
        monkeypatch.setenv("WANDB_API_KEY", key)
    else:
        (no_credentials / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {key}\n")
        (no_credentials / ".netrc").chmod(0o600)
    assert ensure_wandb_mode() is None
    assert os.environ.get("WANDB_MODE") == ("disabled" if setting == "mode" else None)
    assert capsys.readouterr().err == ""


# --- two runs in one folder: no collision, one W&B run each, the config uploaded ---------------------
@pytest.mark.slow
def test_two_runs_in_one_folder_keep_their_own_config_and_wandb_run(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    for alpha in ("0.5", "0.5"):  # the same setting twice: the same run name
        cli_main(["fit", "--config", BASE, f"--data.data_dir={data_dir}", f"--model.alpha={alpha}", *TINY])
    listing = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "runs").rglob("*")
                     if "files" not in p.parts and "logs" not in p.parts)
    folders = sorted((tmp_path / "runs/mnist_alpha0.5_seed0").iterdir())
    assert [f.name for f in folders] == ["version_0", "version_1"], listing
    wandb_runs = sorted((tmp_path / "runs/wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2, listing  # the first command's W&B run was finished, not reused
    uploaded = [read_offline_run(r)["config"].get("config") for r in wandb_runs]
    for folder, config in zip(folders, uploaded, strict=True):
        on_disk = yaml.safe_load((folder / "config.yaml").read_text())
        assert config == on_disk, listing  # the resolved config, as SaveConfigCallback wrote it
        assert config["model"]["alpha"] == 0.5 and config["trainer"]["logger"][0]["init_args"]["name"] == (
            "mnist_alpha0.5_seed0")


# --- an offline run from the command line, with no credentials -------------------------------------
@pytest.mark.slow
def test_offline_run_holds_the_metrics_the_config_and_the_images(no_credentials, tmp_path, data_dir):
    env = {**os.environ, "WANDB_LOG_MODEL": "true"}  # checkpoints as artifacts, too
    assert "WANDB_SERVICE" not in env  # a fresh process, not a client of this one's wandb service
    proc = subprocess.run([sys.executable, "-m", "consistency_vae", "fit", "--config", BASE,
                           f"--data.data_dir={data_dir}", "--model.alpha=2", *TINY],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no W&B credentials" in proc.stderr  # the one-line notice, not a hang or a crash
    (run_dir,) = (tmp_path / "runs/wandb").glob("offline-run-*")
    run = read_offline_run(run_dir)
    assert run["run"].project == "consistency-vae" and list(run["run"].tags) == ["mnist", "alpha=2.0"]
    assert run["run"].display_name == "mnist_alpha2.0_seed0"
    # the config: the resolved CLI config under "config", equal to the run folder's config.yaml
    (folder,) = (tmp_path / "runs/mnist_alpha2.0_seed0").iterdir()
    assert run["config"]["config"] == yaml.safe_load((folder / "config.yaml").read_text())
    # the metrics: every stage's terms, and the same final test numbers as the CSV record
    logged = {k for row in run["history"] for k in row}
    for stage in ("val", "test"):
        assert {f"{stage}/{t}" for t in ("loss", "recon", "kl", "kl_consistency", "elbo")} <= logged
    assert "train/loss_epoch" in logged
    with (folder / "metrics.csv").open() as f:
        import csv

        last_test = [row for row in csv.DictReader(f) if row.get("test/elbo")][-1]
    assert run["summary"]["test/elbo"] == pytest.approx(float(last_test["test/elbo"]))
    # the images: the figures, logged as W&B images with their PNG files in the run
    images = {k: v for row in run["history"] for k, v in row.items()
              if isinstance(v, dict) and v.get("_type") == "images/separated"}
    assert {"figures/latent_drift", "figures/reconstructions", "figures/prior_samples"} <= set(images)
    for image in images.values():  # each history entry points at a real PNG in the run's files/
        (name,) = image["filenames"]
        assert (run_dir / "files" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # log_model: the checkpoints went in as an artifact
    kinds = [kind for kind, _ in wandb_records(next(run_dir.glob("run-*.wandb")))]
    assert "artifact" in kinds


# --- the reachability probe behind a proxy ------------------------------------------------------
PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture
def proxy_env(monkeypatch):
    """No proxy variable of the machine leaks in; returns a listening local port and a closed one."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    with socket.socket() as listening, socket.socket() as closed:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        yield listening.getsockname()[1], closed.getsockname()[1]


# The W&B server behind the proxy: a name that never resolves (RFC 2606), as for a user whose
# machine reaches the internet through the proxy alone.
SERVER = "https://api.wandb.invalid"


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY"])
def test_the_probe_goes_to_the_proxy_that_applies(proxy_env, monkeypatch, variable):
    up, down = proxy_env
    monkeypatch.setenv(variable, f"http://127.0.0.1:{up}")
    assert tracking._first_hop(SERVER) == ("127.0.0.1", up)
    assert tracking._reachable(SERVER, timeout=3)
    monkeypatch.setenv(variable, f"127.0.0.1:{down}")  # no scheme: an http proxy, as requests reads it
    assert not tracking._reachable(SERVER, timeout=3)


def test_no_proxy_and_other_schemes_probe_the_server_itself(proxy_env, monkeypatch):
    up, down = proxy_env
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{up}")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert tracking._first_hop(f"https://127.0.0.1:{down}") == ("127.0.0.1", down)
    assert not tracking._reachable(f"https://127.0.0.1:{down}", timeout=3)
    monkeypatch.delenv("NO_PROXY")
    assert tracking._first_hop(f"http://127.0.0.1:{down}") == ("127.0.0.1", down)  # no HTTP_PROXY


def test_credentials_behind_a_reachable_proxy_stay_online(proxy_env, monkeypatch, tmp_path, capsys):
    up, _ = proxy_env
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{up}")
    monkeypatch.setenv("WANDB_BASE_URL", SERVER)
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert ensure_wandb_mode() is None and "WANDB_MODE" not in os.environ
    assert "offline" not in capsys.readouterr().err


# --- W&B with credentials but no route to its server: offline, not a 90 s hang and a crash ----------
@pytest.fixture
def wandb_key_no_server(tmp_path, monkeypatch):
    """An API key, no WANDB_MODE, and a W&B server address where nothing listens."""
    with socket.socket() as s:  # a port that was free a moment ago: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for proxy in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):  # the probe would go there
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HOME", str(tmp_path))
    return port


def test_unreachable_wandb_server_means_offline_with_one_line(wandb_key_no_server, capsys, monkeypatch):
    assert ensure_wandb_mode() == "offline" and os.environ["WANDB_MODE"] == "offline"
    message = capsys.readouterr().err.strip()
    assert f"the W&B server http://127.0.0.1:{wandb_key_no_server} cannot be reached" in message
    assert "logging to W&B offline" in message and "\n" not in message
    with socket.socket() as server:  # a server that answers: the mode is left to the user
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.delenv("WANDB_MODE")
        assert ensure_wandb_mode() is None and "WANDB_MODE" not in os.environ


@pytest.mark.slow
def test_fit_with_a_key_but_no_network_finishes_offline(wandb_key_no_server, tmp_path, data_dir):
    env = {**ENV, **{k: os.environ[k] for k in ("WANDB_API_KEY", "WANDB_BASE_URL", "HOME")}}
    del env["WANDB_MODE"]
    proc = subprocess.run([sys.executable, "-m", "consistency_vae", "fit", "--config", BASE,
                           f"--data.data_dir={data_dir}", "--data.subset=512", *TINY],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cannot be reached within 3 s (no network?): logging to W&B offline" in proc.stderr
    assert len(list((tmp_path / "runs/wandb").glob("offline-run-*"))) == 1
