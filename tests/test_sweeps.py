"""The sweep files: every file in sweeps/ is checked against the sweeps package's schema, against
the CLI (each parameter is a key it accepts), and by running the command that wandb's own code
builds for one proposed run. The metric each file names: test_sweep_metric.py; the offline sweep
and its report end to end: test_sweep_offline.py.
"""

import itertools
import math
import os
import statistics
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from consistency_vae.cli import cli_main
from consistency_vae.run_name import run_name
from consistency_vae.sweep.sweep_file import build_command, grid_points, load_sweep, propose
from tests import cli_runs
from tests.conftest import ROOT
from tests.sweep_files import SWEEPS, cli_args, ids

ALPHA_GRIDS = [p for p in SWEEPS if p.name.startswith("alpha_")
               and yaml.safe_load(p.read_text())["method"] == "grid"]
REPRODUCTION = sorted((ROOT / "sweeps").glob("reproduce_*.yaml"))
ALPHAS = [0.0, 0.1, 0.3, 1.0, 3.0, 10.0]
DEFAULTS = {"data.dataset": "mnist", "model.latent_dim": 2, "model.alpha_mode": "fixed",
            "model.kl_target": 1.0, "model.alpha": 1.0, "seed_everything": 0}  # configs/mnist.yaml


def test_sweeps_folder_holds_the_alpha_and_the_reproduction_files():
    assert {p.name for p in SWEEPS} >= {"alpha_mnist.yaml", "alpha_fashion_mnist.yaml", "alpha_bayes.yaml",
                                        "reproduce_claims.yaml", "reproduce_front.yaml",
                                        "reproduce_constrained_2d.yaml",
                                        "reproduce_constrained_20d.yaml"}


# --- schema, engine, command ----------------------------------------------------------------
@pytest.mark.parametrize("sweep_file", SWEEPS, ids=ids)
def test_sweep_file_passes_the_sweeps_schema(sweep_file):
    with warnings.catch_warnings():  # sweeps' pydantic v1-style config key
        warnings.simplefilter("ignore")
        from sweeps import SweepConfig, schema_violations_from_proposed_config

    config = yaml.safe_load(sweep_file.read_text())
    assert schema_violations_from_proposed_config(config) == []
    SweepConfig(config)  # raises on a violation
    # a block list of wandb macros, as `wandb agent` expands them
    assert config["command"][:4] == ["${env}", "${interpreter}", "-m", "${program}"]
    assert config["program"] == "consistency_vae" and config["command"][-1] == "${args}"
    assert config["metric"]["goal"] in ("minimize", "maximize")


def test_a_schema_violation_is_refused_with_its_message(tmp_path):
    from consistency_vae.errors import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("method: grid\nmetric: {name: val/loss, goal: lowest}\n"
                   "parameters: {model.alpha: {values: [1]}}\n")
    with pytest.raises(ConfigError, match="breaks the W&B sweep schema.*lowest"):
        load_sweep(bad)


@pytest.mark.parametrize("sweep_file", ALPHA_GRIDS, ids=[p.name for p in ALPHA_GRIDS])
def test_grid_files_cover_alpha_by_three_seeds(sweep_file):
    config, runs = load_sweep(sweep_file), []
    while (params := propose(config, runs)) is not None:
        runs.append({"id": str(len(runs)), "params": params, "status": "finished"})
    proposed = [(r["params"]["model.alpha"], r["params"]["seed_everything"]) for r in runs]
    assert sorted(proposed) == sorted(itertools.product(ALPHAS, [0, 1, 2]))


def test_reproduction_grids_are_the_issues_runs():
    """The claims: 2 datasets x 2 latent sizes x alpha 0 and 1 x 10 seeds; the rest of the front:
    the same x 5 other alphas x 5 seeds; constrained: 2 epsilons per dataset and latent size,
    5 seeds; 25 epochs each."""
    points = {p.stem: grid_points(load_sweep(p)) for p in REPRODUCTION}
    assert set(points) == {"reproduce_claims", "reproduce_front", "reproduce_constrained_2d",
                           "reproduce_constrained_20d"}

    def fixed(name):
        return sorted((p["data.dataset"], p["model.latent_dim"], p["model.alpha"], p["seed_everything"])
                      for p in points[name])

    settings = (["fashion_mnist", "mnist"], [2, 20])
    assert fixed("reproduce_claims") == sorted(itertools.product(*settings, [0.0, 1.0], range(10)))
    assert fixed("reproduce_front") == sorted(itertools.product(*settings, [0.1, 0.3, 3.0, 10.0, 30.0],
                                                                range(5)))
    for dim in (2, 20):
        constrained = points[f"reproduce_constrained_{dim}d"]
        assert {(p["model.latent_dim"], p["model.alpha_mode"]) for p in constrained} == {(dim, "constrained")}
        assert len({p["model.kl_target"] for p in constrained}) == 2 and len(constrained) == 2 * 2 * 5
        assert {p["seed_everything"] for p in constrained} == set(range(5))
    assert all(p["trainer.max_epochs"] == 25 for ps in points.values() for p in ps)


def test_no_two_reproduction_runs_share_a_run_folder_name():
    names = [run_name(*({**DEFAULTS, **p}[k] for k in DEFAULTS))
             for f in REPRODUCTION for p in grid_points(load_sweep(f))]
    assert len(names) == 80 + 100 + 20 + 20 == len(set(names))
    assert "fashion_mnist_z20_constrained_kl4.0_alpha1.0_seed2" in names
    assert "mnist_alpha1.0_seed0" in names  # the default run's name is unchanged


def search(config: dict, method: str, runs: int) -> list[float]:
    """Run ``runs`` proposals of ``method`` through propose(), each finished with a synthetic
    metric that peaks at alpha = 0.3; return each proposal's distance to 0.3 in decades."""
    import numpy as np

    config, done = {**config, "method": method}, []
    metric, bounds = config["metric"]["name"], config["parameters"]["model.alpha"]
    state = np.random.get_state()
    np.random.seed(0)  # the engine draws its candidates from numpy's global generator
    try:
        for i in range(runs):
            alpha = propose(config, done)["model.alpha"]
            assert bounds["min"] <= alpha <= bounds["max"]
            assert isinstance(alpha, float)  # a plain float for JSON, not a numpy scalar
            done.append({"id": str(i), "status": "finished",
                         "params": {"model.alpha": alpha, "seed_everything": 0},
                         "history": [{metric: -100.0 - 10 * math.log10(alpha / 0.3) ** 2}]})
    finally:
        np.random.set_state(state)
    return [abs(math.log10(run["params"]["model.alpha"] / 0.3)) for run in done]


def test_bayes_file_searches_alpha_on_a_log_scale_and_learns_from_finished_runs():
    config = load_sweep(ROOT / "sweeps/alpha_bayes.yaml")
    alpha = config["parameters"]["model.alpha"]
    assert alpha["distribution"] == "log_uniform_values" and 0 < alpha["min"] < 1 < alpha["max"]
    assert config["metric"]["goal"] == "maximize"
    # W&B's engine, fed the finished runs as the runner feeds them: the proposals close in on the
    # optimum. Random search over the same range stays ~0.9 decades away on average (the mean
    # distance of a uniform point in [-2, 1.48] from -0.52); measured with seeds 0-4: bayes 0.015-0.046,
    # random 0.77-0.93.
    bayes, random = search(config, "bayes", 20), search(config, "random", 20)
    assert statistics.mean(bayes[10:]) < 0.2 < 0.5 < statistics.mean(random[10:])
    assert min(bayes[10:]) < 0.05


def test_build_command_equals_what_wandb_agent_runs(tmp_path, monkeypatch):
    """The reference is wandb's own Agent._command_run, with its process launcher stubbed."""
    from wandb import wandb_agent

    launched = []

    class Recorded:  # stands in for the subprocess the agent would start
        def __init__(self, command=None, **kwargs):
            launched.append(command)

    monkeypatch.setattr(wandb_agent, "AgentProcess", Recorded)
    for var, value in [("WANDB_DIR", str(tmp_path)), ("WANDB_SWEEP_ID", "s1"), ("WANDB_RUN_ID", "r0"),
                       ("WANDB_SWEEP_PARAM_PATH", "")]:
        monkeypatch.setenv(var, value)  # the agent writes some of these; monkeypatch restores them
    config = load_sweep(ROOT / "sweeps/alpha_fashion_mnist.yaml")
    params = {"model.alpha": 0.3, "seed_everything": 2}
    agent = wandb_agent.Agent.__new__(wandb_agent.Agent)
    agent._sweep_command, agent._function, agent._in_jupyter = config["command"], None, False
    agent._run_processes, agent._forward_signals, agent._log = {}, False, []
    agent._command_run({"run_id": "r1", "program": config["program"],
                        "args": {k: {"value": v} for k, v in params.items()}})
    assert launched == [build_command(config, params, interpreter="python")]
    assert build_command(config, params)[1] == sys.executable  # the offline runner's interpreter


@pytest.mark.parametrize("sweep_file", SWEEPS, ids=ids)
def test_every_parameter_is_a_key_the_cli_accepts(sweep_file, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the command's --config paths are relative to the repository
    config = load_sweep(sweep_file)
    params = propose(config, [])
    assert set(params) == set(config["parameters"])
    with pytest.raises(SystemExit) as exit_:
        cli_main([*cli_args(sweep_file, params), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    for key, value in params.items():
        node = printed
        for part in key.split("."):
            node = node[part]
        if isinstance(node, dict) and "class_path" in node:  # a class named by its short name
            node = node["class_path"].rsplit(".", 1)[-1]
        assert node == value, key
    # the run folder's name is run_name() of the values (what test_reproduction_... relies on)
    model = printed["model"]
    expected = run_name(printed["data"]["dataset"], model["latent_dim"], model["alpha_mode"],
                        model["kl_target"], model["alpha"], printed["seed_everything"],
                        model.get("multiplier"))
    assert [lg["init_args"]["name"] for lg in printed["trainer"]["logger"]] == [expected] * 2


def test_a_misspelt_parameter_is_refused_by_the_cli(capsys, monkeypatch):
    """The check above has teeth: the parser rejects a key it does not know."""
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_:
        cli_main([*cli_args(ROOT / "sweeps/alpha_mnist.yaml", {"model.alpah": 1.0}), "--print_config"])
    assert exit_.value.code not in (0, None) and "alpah" in capsys.readouterr().err


def train_with_wandbs_command(sweep_file: Path, tmp: Path, data_dir: Path) -> subprocess.CompletedProcess:
    """One proposed run, its argv from wandb's own code, run as a subprocess with fast_dev_run."""
    config = load_sweep(sweep_file)
    argv = build_command(config, propose(config, []))
    return subprocess.run([*argv, "--trainer.fast_dev_run=1", f"--trainer.default_root_dir={tmp}",
                           f"--data.data_dir={data_dir}", "--trainer.enable_progress_bar=false"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "WANDB_MODE": "disabled"})


@pytest.fixture(scope="module")
def wandb_commands(request, tmp_path_factory, data_dir) -> dict:
    """The run of each sweep file that this session's tests ask for (-k chooses as ever), two at a
    time: a run is a process of one thread (threads.py's default) that mostly imports, and two fill
    a 2-core machine. sweep file -> its CompletedProcess, or the error (a timeout) its test raises."""
    files = [item.callspec.params["sweep_file"] for item in request.session.items
             if item.module is request.module and item.originalname == TRAINS]
    with ThreadPoolExecutor(cli_runs.AT_ONCE) as pool:
        runs = {f: pool.submit(train_with_wandbs_command, f, tmp_path_factory.mktemp("wandb_command"),
                               data_dir) for f in files}
        return {f: run.exception() or run.result() for f, run in runs.items()}


TRAINS = "test_the_command_wandb_builds_really_trains"


@pytest.mark.slow
@pytest.mark.parametrize("sweep_file", SWEEPS, ids=ids)
def test_the_command_wandb_builds_really_trains(sweep_file, wandb_commands):
    proc = wandb_commands[sweep_file]
    if isinstance(proc, BaseException):
        raise proc
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "`Trainer.fit` stopped: `max_steps=1` reached" in proc.stdout + proc.stderr


FAKE_WANDB = """#!/bin/bash
if [ "$1" = sweep ]; then echo "wandb: Creating sweep from: $2"; %s; exit 0; fi
echo "AGENT [$*] PYTHON=$(command -v python)"
"""


@pytest.mark.parametrize("sweep_prints_id", [True, False], ids=["logged_in", "no_sweep_id"])
def test_make_sweep_creates_then_runs_an_agent_with_the_venv_python(tmp_path, sweep_prints_id):
    """`make sweep` with a stand-in `wandb` that records what the agent is given."""
    fake = tmp_path / "wandb"
    echo = 'echo "wandb: Run sweep agent with: wandb agent me/consistency-vae/abc123"'
    fake.write_text(FAKE_WANDB % (echo if sweep_prints_id else "echo 'wandb: ERROR api_key not configured'"))
    fake.chmod(0o755)
    proc = subprocess.run(["make", "-o", "data", "sweep", f"WANDB={fake}", "SWEEP=sweeps/alpha_bayes.yaml",
                           "COUNT=2"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if sweep_prints_id:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # the agent gets the count and the ID, and `python` (the command's ${interpreter}) is the venv's
        (line,) = [line for line in proc.stdout.splitlines() if line.startswith("AGENT")]
        assert line.startswith("AGENT [agent --count 2 me/consistency-vae/abc123] PYTHON=")
        python = Path(line.split("PYTHON=")[1])
        assert python.name == "python" and python.parent.resolve() == (ROOT / ".venv/bin").resolve()
        assert "make agent SWEEP_ID=me/consistency-vae/abc123" in proc.stdout
    else:
        assert proc.returncode != 0 and "no sweep ID" in proc.stdout and "AGENT" not in proc.stdout
