"""The core installs beside numpy 2 (issue 21, section 7). W&B's sweep engine (`sweeps` 0.3.0, its
newest release) pins numpy<2, so as a core dependency it downgraded numpy in the environment of
anyone installing this package. It is now the extra `[sweeps]`, which `make` installs, imported
only where an offline sweep uses it, and a one-line error naming the install command where it is
missing."""

import json
import re
import subprocess
import sys

import pytest

from consistency_vae.cli import cli_main
from consistency_vae.errors import UserError
from consistency_vae.sweep import sweep_file
from tests.conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def test_sweeps_is_an_extra_that_make_installs():
    assert "sweeps" not in {name(r) for r in PROJECT["dependencies"]}
    assert [name(r) for r in PROJECT["optional-dependencies"]["sweeps"]] == ["sweeps"]
    assert "-e '.[dev,sweeps]'" in (ROOT / "Makefile").read_text()


def test_a_missing_engine_is_one_line_with_the_install_command(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sweeps", None)  # `import sweeps` raises ImportError
    with pytest.raises(UserError, match=re.escape("pip install 'consistency-vae[sweeps]'")):
        sweep_file.load_sweep(ROOT / "sweeps/alpha_mnist.yaml")
    with pytest.raises(SystemExit) as end:
        cli_main(["sweep", str(ROOT / "sweeps/alpha_mnist.yaml"), "--list"])
    line = str(end.value.code)
    assert line.startswith("consistency-vae: error: offline sweeps") and "\n" not in line


def test_no_module_needs_the_engine_to_import():
    """Every module of the package imports with `sweeps` absent: it is imported where it is used."""
    code = """import importlib, pkgutil, sys
sys.modules["sweeps"] = None
import consistency_vae
for m in pkgutil.walk_packages(consistency_vae.__path__, "consistency_vae."):
    importlib.import_module(m.name)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_a_fresh_install_of_the_core_resolves_numpy_2():
    """pip resolves the core's dependencies as for a new environment (--ignore-installed, nothing
    installed): numpy 2.x, and no `sweeps`. With `sweeps` a core dependency, the same resolution
    gave numpy 1.26.4 (sweeps 0.3.0's numpy<2). Needs the package registry; about a minute."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--disable-pip-version-check", "--report", "-", *PROJECT["dependencies"]],
        capture_output=True, text=True, timeout=900, cwd=ROOT)
    offline = re.search(r"NewConnectionError|Could not fetch URL|Temporary failure", proc.stderr)
    if proc.returncode != 0 and offline:
        pytest.skip(f"no package registry here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    chosen = {i["metadata"]["name"].lower(): i["metadata"]["version"]
              for i in json.loads(proc.stdout)["install"]}
    assert int(chosen["numpy"].split(".")[0]) >= 2 and "sweeps" not in chosen, chosen
