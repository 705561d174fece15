"""Every command that the README and docs/ show runs on a fresh clone.

The commands are read out of the ```bash blocks, not copied here, so a command added to the docs
is run by this test the next time, and a command that stops working fails it. Each runs as a
subprocess in a copy of the tracked files (what a fresh clone holds, `results/` included, so an
example that would overwrite a tracked file fails here too), with the real data linked in and
W&B disabled. To keep the suite short, long commands get a smaller setting appended: one epoch
on 512 images, a few IWAE samples on a 101 x 101 quadrature grid, one sweep run, a bench of 2048
images. Commands that need what this machine lacks (a W&B server, several GPUs, a cluster) are
skipped by name, with the reason.

The README's tour runs as one sequence, as a new user types it; each command of docs/ runs in
its own copy, after a short `fit` where it needs a checkpoint to work on. Every command runs on
one thread (cli_runs.ENV), so the tour and the docs commands run two at a time (``AT_ONCE``), each
in its own clone, in one module fixture; each test then reports its own command's result.
"""

import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import cli_runs
from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FIT_FAST = ["--data.subset=512", "--trainer.max_epochs=1"]
EVAL_FAST = ["--iwae_k", "4", "--iwae_images", "16", "--data.subset", "512", "--quadrature_points", "101"]
CKPT = "runs/mnist_alpha1.0_seed0/version_0/checkpoints/last.ckpt"
PLACEHOLDERS = {"runs/.../last.ckpt": CKPT, "X.ckpt": CKPT}
SKIPS = {  # command prefix -> why it cannot run here
    "make test": "the test suite itself",
    "make sweep": "needs a W&B account and server",
    "make agent": "needs a W&B account and server",
    "wandb ": "needs a W&B account and server",
    "CUDA_VISIBLE_DEVICES=": "needs a W&B server and GPUs",
    "torchrun ": "needs two nodes",
    "srun ": "needs a SLURM cluster",
    "sbatch ": "needs a SLURM cluster (tests/test_sweep_runner.py runs the script as one array task)",
    "rsync ": "gathers run folders from other machines",
    "make reproduce": "hours of training (tests/test_reproduce.py runs it on a subset)",
    "consistency-vae reproduce": "needs the reproduction's runs (tests/test_reproduce.py: on a subset)",
    "source .venv/bin/activate": "shell set-up: the tests run the package from the copy",
}


def doc_commands(path: Path) -> list[str]:
    """The command lines of a Markdown file's ```bash blocks: continuations joined, comments cut."""
    commands, block = [], None
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            block = [] if block is None and line.strip() == "```bash" else None
            continue
        if block is None:
            continue
        text = line.split(" #")[0].rstrip() if not line.lstrip().startswith("#") else ""
        if commands and commands[-1].endswith("\\"):
            commands[-1] = commands[-1][:-1].rstrip() + " " + text.strip()
        elif text.strip():
            commands.append(text.strip())
    return commands


def skip_reason(command: str) -> str | None:
    for prefix, why in SKIPS.items():
        if command.startswith(prefix):
            return why
    if "--trainer.devices=4" in command:
        return "needs 4 devices (tests/test_ddp.py runs DDP with 2 gloo processes)"
    if ("--device cuda" in command or command.startswith("python scripts/gpu_check.py")) and not _has_cuda():
        return "needs a GPU"
    return None


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def as_argv(command: str) -> list[str]:
    """A documented command -> the argv run here, with the fast settings appended."""
    for placeholder, real in PLACEHOLDERS.items():
        command = command.replace(placeholder, real)
    words = shlex.split(command)
    if words[:2] == ["make", "train"]:  # the Makefile's recipe: $(CLI) fit --config $(CONFIG) $(ARGS)
        args = next((w.split("=", 1)[1] for w in words[2:] if w.startswith("ARGS=")), "")
        words = ["consistency-vae", "fit", "--config", "configs/mnist.yaml", *shlex.split(args)]
    if words[:2] == ["make", "bench"]:
        words = ["consistency-vae", "bench", "--epochs", "1", "--subset", "2048"]  # 16 steps an epoch
    if words[0] == "ls":
        return words
    assert words[0] == "consistency-vae", f"no rule to run {command!r}: add one in {__file__}"
    sub, rest = words[1], words[2:]
    if sub in ("fit", "validate", "test", "predict") and "--print_config" not in rest:
        resumes = "--ckpt_path" in rest and sub == "fit"
        rest = rest + FIT_FAST + (["--trainer.max_epochs=2"] if resumes else [])
    elif sub == "evaluate":
        rest = rest + EVAL_FAST
    elif sub == "sweep":  # one run; argparse keeps the last --count, and --extra-args takes the rest
        cut = rest.index("--extra-args") if "--extra-args" in rest else len(rest)
        rest = [*rest[:cut], "--count", "1", "--extra-args", *rest[cut + 1:], *FIT_FAST]
    return [sys.executable, "-m", "consistency_vae", sub, *rest]


def fresh_clone(tmp_path: Path, data_dir: Path) -> Path:
    """The tracked files of the repository, copied; data/ linked (it is large and read-only here)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tmp_path / name)
    (tmp_path / "data").symlink_to(data_dir)
    return tmp_path


def run(cwd: Path, argv: list[str], timeout: float = 600) -> None:
    if argv[0] == "ls":
        assert all((cwd / p).exists() for p in argv[1:] if not p.startswith("-")), argv
        return
    env = {**cli_runs.ENV, "PYTHONPATH": str(cwd)}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{shlex.join(argv[2:])} failed ({done.returncode}):\n" \
                                 f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_every_documented_command_has_a_rule():
    """Each command is either skipped for a stated reason or translatable to a run here."""
    for doc in DOCS:
        for command in doc_commands(doc):
            if skip_reason(command) is None:
                as_argv(command)  # raises for a command with no rule


def test_no_documented_output_overwrites_a_tracked_file():
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split())
    for doc in DOCS:
        for command in doc_commands(doc):
            words = shlex.split(command)
            if "--output" in words and "sweep-report" not in words:  # the report's job is results/
                out = words[words.index("--output") + 1]
                assert not any(t.startswith(out.rstrip("/") + "/") for t in tracked), (doc.name, command)


def readme_tour(tmp: Path, data_dir: Path) -> None:
    """The README's commands in order, in one fresh clone, as a new user types them."""
    clone = fresh_clone(tmp, data_dir)
    for command in doc_commands(ROOT / "README.md"):
        if skip_reason(command) is None:
            run(clone, as_argv(command))


def _docs_cases() -> list:
    """Each distinct command of docs/ once (a command shown on two pages runs under the first), and
    none that the README tour runs: there it runs as here, after a `fit` (the sweep with --count 2,
    evaluate of that run, `runs`)."""
    cases, seen = [], set(doc_commands(DOCS[0]))
    for doc in DOCS[1:]:
        for command in doc_commands(doc):
            if command not in seen:
                seen.add(command)
                cases.append(pytest.param(doc, command, id=f"{doc.stem}:{command[:60]}"))
    return cases


def clone_with_a_run(tmp: Path, data_dir: Path) -> Path:
    """A fresh clone after `consistency-vae fit`: a run to test, evaluate or report on. Each command
    works on its own copy; a command that resumes the run fits in its own clone instead, so that
    the checkpoint's recorded folders are where `fit` wrote them, as for a user."""
    clone = fresh_clone(tmp, data_dir)
    run(clone, as_argv("consistency-vae fit --config configs/mnist.yaml"))
    return clone


def resumes(command: str) -> bool:
    return "--ckpt_path" in command and shlex.split(command)[1] == "fit"


def reads_a_run(command: str) -> bool:
    return not resumes(command) and ("--ckpt_path" in command or command.startswith(
        ("consistency-vae sweep-report", "consistency-vae runs", "consistency-vae compare")))


def docs_command(command: str, tmp: Path, data_dir: Path, fitted: Callable[[], Path]) -> None:
    """One command of docs/ in its own clone; ``fitted()``: the clone with a run, to copy."""
    if reads_a_run(command):  # something to test, evaluate or report on: a copy of the fitted clone
        clone = tmp / "clone"
        shutil.copytree(fitted(), clone, symlinks=True)
    else:
        clone = fresh_clone(tmp, data_dir)
    if resumes(command):
        run(clone, as_argv("consistency-vae fit --config configs/mnist.yaml"))
    if command.startswith("consistency-vae compare"):  # a plain VAE to set beside the fitted run
        run(clone, as_argv("consistency-vae fit --config configs/mnist.yaml --model.alpha=0"))
    run(clone, as_argv(command))


TOUR = "README tour"


@pytest.fixture(scope="module")
def documented_runs(request, tmp_path_factory, data_dir) -> dict[str, BaseException | None]:
    """The README tour and the runnable docs commands of the tests this session runs (-k and -m
    choose as ever), cli_runs.AT_ONCE at a time: TOUR or command -> the error it ended with, or None. The
    clone with a run is made first, once, if a command reads it; a failed one fails each of them."""
    chosen = [item for item in request.session.items if item.module is request.module]
    commands = [item.callspec.params["command"] for item in chosen
                if item.originalname == "test_docs_command_runs"
                and skip_reason(item.callspec.params["command"]) is None]
    with ThreadPoolExecutor(cli_runs.AT_ONCE) as pool:
        # submitted first, so it runs before any command that waits for it: no deadlock at 1 worker
        fitted = pool.submit(clone_with_a_run, tmp_path_factory.mktemp("clone_with_a_run"), data_dir) \
            if any(map(reads_a_run, commands)) else None
        jobs = {}
        if any(item.originalname == "test_readme_tour_runs_in_order" for item in chosen):
            jobs[TOUR] = pool.submit(readme_tour, tmp_path_factory.mktemp("tour"), data_dir)  # longest
        for command in commands:
            jobs[command] = pool.submit(docs_command, command, tmp_path_factory.mktemp("docs"), data_dir,
                                        fitted.result if fitted else None)
        return {key: job.exception() for key, job in jobs.items()}


def reported(error: BaseException | None) -> None:
    if error is not None:
        raise error  # the command's own assertion (its output) or timeout


@pytest.mark.slow
def test_readme_tour_runs_in_order(documented_runs):
    reported(documented_runs[TOUR])


@pytest.mark.slow
@pytest.mark.parametrize(("doc", "command"), _docs_cases())
def test_docs_command_runs(doc, command, documented_runs):
    if (why := skip_reason(command)) is not None:
        pytest.skip(why)
    reported(documented_runs[command])
