"""A packed member's checkpoints are its solo run's (consistency_vae/packed/checkpoint.py).

Two members, each built by its own LightningCLI as ``consistency-vae fit`` builds it (run=False):
one fixed, one constrained (kl_target 0.5), with the NuPI multiplier (a rule with state of its own)
and the cosine schedule (a scheduler state), so that every part of a checkpoint matters. A stand-in
for the packed run's writer (``Writer``) saves each member's best-epochNN.ckpt and last.ckpt into
its run folder after each epoch, as its solo run's ModelCheckpoint does.
"""

import copy
import csv
import shutil
from pathlib import Path

import pytest
import torch

from consistency_vae import run_start
from consistency_vae.errors import CheckpointError
from consistency_vae.model import ConsistencyVAE
from consistency_vae.packed import PackMember, fit_pack
from consistency_vae.packed import checkpoint as pack_checkpoint
from consistency_vae.packed.checkpoint import member_checkpoint, save
from consistency_vae.packed.fit import MemberResult
from consistency_vae.packed.members import build_models
from consistency_vae.packed.restore import restore_members, resume_epoch
from consistency_vae.packed.step import Pack
from consistency_vae.training_cli import lightning_cli
from tests.conftest import ROOT
from tests.float32 import approx_f32

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SUBSET, EPOCHS = 512, 3  # 4 training steps of batch 128 per epoch, one validation batch of 512
PER_EPOCH, VAL_BATCHES = 4, 1
KILLED_AFTER = 1  # the pack's files stop after epoch 1 (0-based), as if it were killed there
MEMBERS = [PackMember(0, 3.0), PackMember(1, 3.0, "constrained", 0.5)]
LR = 1e-3  # configs/mnist.yaml's model.lr


def member_args(member: PackMember, root: Path, data_dir: Path) -> list[str]:
    """The member's `consistency-vae fit` flags (without the subcommand)."""
    return ["--config", str(ROOT / "configs/mnist.yaml"), f"--seed_everything={member.seed}",
            f"--model.alpha={member.alpha}", f"--model.alpha_mode={member.alpha_mode}",
            f"--model.kl_target={member.kl_target}", "--model.lr_schedule=cosine",
            "--model.multiplier=consistency_vae.multipliers.NuPI", f"--data.data_dir={data_dir}",
            f"--data.subset={SUBSET}", f"--trainer.max_epochs={EPOCHS}", f"--trainer.default_root_dir={root}",
            "--trainer.enable_progress_bar=false"]


def member_cli(member: PackMember, root: Path, data_dir: Path):
    """The member's fit, built and not run; its ModelCheckpoint pointed at its run folder."""
    cli = lightning_cli(member_args(member, root, data_dir), run=False)
    cli.trainer.checkpoint_callback.dirpath = str(run_start.run_folder(cli.trainer) / "checkpoints")
    return cli


def solo_fit(member: PackMember, root: Path, data_dir: Path, *extra: str):
    """`consistency-vae fit` of the member through the real CLI, in this process."""
    return lightning_cli(["fit", *member_args(member, root, data_dir), *extra])


def checkpoints_of(cli) -> Path:
    return run_start.run_folder(cli.trainer) / "checkpoints"


class Writer:
    """on_epoch_end: each member's checkpoints as its ModelCheckpoint saves them: the best when
    val/selection improved (before last_model_path moves on), then last.ckpt; written to disk up to
    epoch ``until``, the last ones kept in memory always. ``alter(state)`` breaks them (controls)."""

    def __init__(self, clis: list, until: int, alter=None):
        self.clis, self.until, self.alter = clis, until, alter or (lambda state: state)
        self.best: list[str | None] = [None] * len(clis)
        self.last: list[str | None] = [None] * len(clis)
        self.states: dict[tuple[int, int], dict] = {}  # (epoch, member) -> its last.ckpt

    def __call__(self, pack, epoch: int, results) -> None:
        step = (epoch + 1) * PER_EPOCH
        for i, (cli, result) in enumerate(zip(self.clis, results, strict=True)):
            callback, names = cli.trainer.checkpoint_callback, {"epoch": epoch, "step": step}
            last = callback.format_checkpoint_name(names, callback.CHECKPOINT_NAME_LAST)
            if result.best_epoch == epoch:
                old, self.best[i] = self.best[i], callback.format_checkpoint_name(names)
                best_state = self.state(pack, i, epoch, result.best_selection, self.last[i])
                if epoch <= self.until:
                    save(best_state, self.best[i])
                    if old:
                        Path(old).unlink()  # save_top_k: 1
            self.last[i] = last
            self.states[epoch, i] = self.state(pack, i, epoch, result.best_selection, last)
            if epoch <= self.until:
                save(self.states[epoch, i], last)

    def state(self, pack, i: int, epoch: int, best_score: float, last_path: str | None) -> dict:
        cli, best = self.clis[i], {"path": self.best[i], "score": best_score, "last_path": last_path}
        return self.alter(member_checkpoint(pack, i, cli.model, cli.datamodule, cli.trainer, epoch=epoch,
                                            global_step=(epoch + 1) * PER_EPOCH, batches_per_epoch=PER_EPOCH,
                                            val_batches=VAL_BATCHES, best=best))


def packed_runs(root: Path, data_dir: Path, alter=None) -> tuple[list, Writer]:
    """The members trained EPOCHS epochs as one pack, their files written up to KILLED_AFTER."""
    clis = [member_cli(m, root / str(i), data_dir) for i, m in enumerate(MEMBERS)]
    writer = Writer(clis, until=KILLED_AFTER, alter=alter)
    fit_pack(MEMBERS, clis[0].datamodule, EPOCHS, models=[c.model for c in clis], on_epoch_end=writer)
    return clis, writer


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """The members' unbroken solo runs of EPOCHS epochs, and the packed run (see packed_runs); a
    copy of each member's last.ckpt after KILLED_AFTER, as the resume test goes on in its folder."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the module-scoped fixture runs before the per-test one_thread
    try:
        solo = [solo_fit(m, tmp_path_factory.mktemp(f"solo{i}"), data_dir) for i, m in enumerate(MEMBERS)]
        root = tmp_path_factory.mktemp("packed")
        clis, writer = packed_runs(root, data_dir)
        copies = [root / f"last{i}.ckpt" for i in range(len(MEMBERS))]
        for cli, kept in zip(clis, copies, strict=True):
            shutil.copy(checkpoints_of(cli) / "last.ckpt", kept)
        return solo, clis, writer, copies, root
    finally:
        torch.set_num_threads(threads)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)  # as Lightning loads: plain data only


def structure(tree) -> object:
    """A checkpoint's nested keys and list lengths, and its values' types, not the values (paths, as
    best_k_models' keys, become PATH: they name each run's own folder)."""
    if isinstance(tree, dict):
        return {("PATH" if "/" in str(k) else k): structure(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [structure(v) for v in tree]
    return type(tree).__name__


def test_a_member_checkpoint_has_the_structure_of_its_solo_runs(runs):
    """The pack's in-memory last.ckpt of the final epoch against the solo run's last.ckpt."""
    solo, _, writer, _, _ = runs
    for i, member in enumerate(MEMBERS):
        real, ours = load(checkpoints_of(solo[i]) / "last.ckpt"), writer.states[EPOCHS - 1, i]
        assert structure(ours) == structure(real), member.name()
        # counts and settings: the same whatever float32 rounding did to the weights
        assert (ours["epoch"], ours["global_step"]) == (real["epoch"], real["global_step"]) == (2, 12)
        assert ours["loops"] == real["loops"]
        assert ours["lr_schedulers"] == real["lr_schedulers"]
        assert ours["optimizer_states"][0]["param_groups"] == real["optimizer_states"][0]["param_groups"]
        assert ours["hyper_parameters"] == real["hyper_parameters"]
        assert ours["datamodule_hyper_parameters"] == real["datamodule_hyper_parameters"]
        assert ours["consistency_vae_initial_alpha"] == real["consistency_vae_initial_alpha"]
        (key, state), = ours["callbacks"].items()
        (real_key, real_state), = real["callbacks"].items()
        assert key == real_key  # the member trainer's ModelCheckpoint's own state_key
        for name in ("best_model_path", "kth_best_model_path", "last_model_path"):
            assert Path(state[name]).name == Path(real_state[name]).name  # best-epoch02.ckpt, last.ckpt
        assert Path(state["dirpath"]).parent == Path(writer.clis[i].trainer.log_dir)
        for name in ("best_model_score", "current_score", "kth_value"):
            assert float(state[name]) == approx_f32(float(real_state[name]), latent_dim=2)


def test_a_member_checkpoint_loads_as_a_solo_runs(runs):
    """load_from_checkpoint reads the file the writer wrote after KILLED_AFTER: the member's weights."""
    _, _, writer, copies, _ = runs
    for i, member in enumerate(MEMBERS):
        model = ConsistencyVAE.load_from_checkpoint(copies[i], map_location="cpu")
        assert (model.hparams.alpha_mode, model.hparams.kl_target) == (member.alpha_mode, member.kl_target)
        loaded = model.state_dict()
        for name, value in writer.states[KILLED_AFTER, i]["state_dict"].items():
            torch.testing.assert_close(loaded[name], value, rtol=0, atol=0, equal_nan=True)  # the same bytes


def last_epoch_rows(folder: Path) -> dict[str, float]:
    """The values metrics.csv logged at the run's last epoch (train, val and the final test rows)."""
    with open(folder / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    last = max(float(r["epoch"]) for r in rows if r["epoch"])
    return {k: float(v) for r in rows if r["epoch"] and float(r["epoch"]) == last for k, v in r.items() if v}


def resume_and_compare(member: PackMember, solo, root: Path, data_dir: Path) -> None:
    """`fit --ckpt_path last --trainer.max_epochs=3` in the member's packed run folder ends where its
    unbroken solo run ends.

    Tolerances. The pack's first 8 steps are the solo's computed with batched GEMMs, whose sums
    run in another order (tests/float32.py); the resumed epoch is then the solo's own code.
    - Metrics (every train, val and test value logged at the last epoch): approx_f32, 1e-5
      relative (abs 1e-5 per latent dim for the KLs). Measured: at most 1.3e-7 relative.
    - Weights: a weight moves by at most about lr per Adam step, and a step whose gradient is
      decided by rounding (a sum that nearly cancels, a ReLU unit at its kink: tests/test_packed.py)
      may go either way, so each weight is within 2 * lr of the solo's (measured: 3.7e-5). All
      but such weights agree to float32 rounding of w: rtol 1e-5, atol 1e-6 (|w| <= 0.72 here).
      How many are decided by rounding depends on the CPU's kernels (their order of summation):
      measured 5 of 313,600 in encoder.net.0.weight on one machine, 625 (0.2%) on another of the
      same kind (max |diff| 4.6e-4, within 2 * lr); we allow 1% of a tensor. A checkpoint that
      lost state fails on the metrics first (the controls below).
    - The run folder's checkpoints have the solo's names (the restored ModelCheckpoint state
      removed the pack's best file when it was beaten, as in the solo run).
    """
    resumed = solo_fit(member, root, data_dir, "--ckpt_path", "last")
    ours_dir, real_dir = checkpoints_of(resumed), checkpoints_of(solo)
    assert sorted(p.name for p in ours_dir.iterdir()) == sorted(p.name for p in real_dir.iterdir())
    ours, real = last_epoch_rows(ours_dir.parent), last_epoch_rows(real_dir.parent)
    assert ours.keys() == real.keys() and ours["epoch"] == EPOCHS - 1
    for key, value in real.items():
        assert ours[key] == approx_f32(value, latent_dim=2), (member.name(), key)
    ours, real = load(ours_dir / "last.ckpt")["state_dict"], load(real_dir / "last.ckpt")["state_dict"]
    for name, value in real.items():
        diff = (ours[name] - value).abs()
        assert not bool((diff > 2 * LR).any()), (member.name(), name, float(diff.max()))  # NaN fails too
        outside = diff > 1e-5 * value.abs() + 1e-6
        assert int(outside.sum()) <= 1e-2 * value.numel(), (member.name(), name, int(outside.sum()))


def test_fit_ckpt_path_resumes_a_member_where_its_solo_run_goes_on(runs, data_dir):
    solo, _, _, _, root = runs
    for i, member in enumerate(MEMBERS):
        resume_and_compare(member, solo[i], root / str(i), data_dir)


def zero_adam(state: dict) -> dict:
    """A checkpoint whose Adam moments are lost (as if the writer saved a fresh optimizer's)."""
    for moments in state["optimizer_states"][0]["state"].values():
        for key in ("exp_avg", "exp_avg_sq"):
            moments[key] = torch.zeros_like(moments[key])
    return state


def zero_rule(state: dict) -> dict:
    """A checkpoint whose multiplier state (NuPI's xi) is the initial one."""
    state["state_dict"]["multiplier.xi"] = torch.zeros_like(state["state_dict"]["multiplier.xi"])
    return state


@pytest.mark.parametrize("alter", [zero_adam, zero_rule])
def test_the_resume_comparison_catches_a_checkpoint_that_lost_state(alter, runs, tmp_path, data_dir):
    """Controls: the tolerances above tell a resumed run from one whose checkpoint lost its Adam
    moments, or its multiplier's state (the constrained member, whose rule ran). Measured: lost
    moments move test/kl_consistency by 13%, a lost NuPI state train/alpha_epoch by 1.7e-3."""
    solo = runs[0]
    packed_runs(tmp_path, data_dir, alter=alter)
    i = 0 if alter is zero_adam else 1
    with pytest.raises(AssertionError):
        resume_and_compare(MEMBERS[i], solo[i], tmp_path / str(i), data_dir)


def test_a_pack_restored_from_its_members_checkpoints_ends_as_the_unbroken_pack(tmp_path, data_dir):
    """Same machine, same computation: the restored pack's weights, Adam state, alpha, constraint
    average, rule state and schedule are the unbroken pack's bytes, so it ends exactly as it does."""
    clis = [member_cli(m, tmp_path / str(i), data_dir) for i, m in enumerate(MEMBERS)]
    dm = clis[0].datamodule
    unbroken = fit_pack(MEMBERS, dm, 2, models=[c.model for c in clis], on_epoch_end=Writer(clis, until=0))
    states = [load(checkpoints_of(c) / "last.ckpt") for c in clis]
    fresh = [member_cli(m, tmp_path / f"fresh{i}", data_dir) for i, m in enumerate(MEMBERS)]
    starts = []

    def restore(pack, results):
        starts.append(restore_members(pack, results, states))
        assert [r.best_epoch for r in results] == [0, 0]

    restored = fit_pack(MEMBERS, dm, 2, models=[c.model for c in fresh], start_epoch=1, restore=restore)
    assert starts == [1]
    for a, b in zip(restored, unbroken, strict=True):
        # every logged value of epoch 1, exactly, but the wall clock's (time/train_epoch_s)
        assert untimed(a.epochs) == untimed(b.epochs[1:])
        assert (a.best_epoch, a.best_selection, a.failed) == (b.best_epoch, b.best_selection, None)
        for mine, theirs in ((a.last_weights, b.last_weights), (a.best_weights, b.best_weights)):
            assert mine.keys() == theirs.keys()
            for name, value in theirs.items():
                torch.testing.assert_close(mine[name], value, rtol=0, atol=0, equal_nan=True)  # exact


def test_a_pack_resumes_only_its_members_from_one_end_of_epoch(runs):
    """Checkpoints of different epochs, mid-epoch ones, or in another order are refused, naming them."""
    writer = runs[2]
    first, second = writer.states[0, 0], writer.states[1, 1]
    with pytest.raises(CheckpointError, match=r"\(alpha=3 seed=0: epoch 0, constrained .* seed=1: epoch 1\)"):
        resume_epoch([first, second], [m.name() for m in MEMBERS])
    mid_epoch = copy.deepcopy(first)  # as saved on SIGTERM, before the epoch's validation
    mid_epoch["loops"]["fit_loop"]["epoch_progress"]["total"]["processed"] = 0
    with pytest.raises(CheckpointError, match="member 0's checkpoint was written mid-epoch"):
        resume_epoch([mid_epoch])
    assert resume_epoch([writer.states[1, 0], writer.states[1, 1]]) == 2
    pack = Pack(MEMBERS, build_models(MEMBERS), steps=EPOCHS * PER_EPOCH)
    swapped = [writer.states[1, 1], writer.states[1, 0]]
    message = ("checkpoint 0 is of alpha_mode=constrained kl_target=0.5 alpha=3.0, but pack member 0 is "
               "alpha=3 seed=0")
    with pytest.raises(CheckpointError, match=message):
        restore_members(pack, [MemberResult(m) for m in MEMBERS], swapped)


def untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def test_the_background_writer_writes_in_order_and_raises_a_failed_write(tmp_path):
    """packed.checkpoint.Writer: tasks run in threads; flush waits for them and raises the first error,
    so a write that failed (here: into a folder that is a file) stops the pack, and leaving the
    ``with`` block after an error of the pack's own waits for the writes in flight."""
    order: list[str] = []
    with pack_checkpoint.Writer(threads=2) as writer:
        writer.submit(lambda: (save({"a": torch.ones(3)}, tmp_path / "a.ckpt"), order.append("a")))
        writer.flush()
        assert order == ["a"] and torch.load(tmp_path / "a.ckpt")["a"].sum() == 3
        (tmp_path / "file").write_text("not a folder")
        writer.submit(lambda: save({"b": torch.ones(3)}, tmp_path / "file" / "b.ckpt"))
        with pytest.raises(OSError):
            writer.flush()
    done: list[str] = []
    with pytest.raises(RuntimeError, match="the pack's own"), pack_checkpoint.Writer() as writer:
        writer.submit(lambda: done.append("written"))
        raise RuntimeError("the pack's own error")
    assert done == ["written"]
