"""The packed step as a CUDA graph can record it (consistency_vae/packed/graph.py).

A graph replays its kernels on the addresses it recorded, and runs nothing on the host. So, on any
device: the static step (CUDA's) keeps the storage of every tensor it touches, and a member's
failure is found without a host read in the step (fit_pack reads the failures once per epoch) yet
reported at its own step, as its solo run reports it, in the static step and the CPU's alike. On
a GPU (marked ``gpu``): a captured pack trains as the uncaptured one, to float32 tolerance,
through a cosine schedule, a constrained member whose multiplier rule has state (NuPI), and a
member that fails mid-run.
"""

import math
import warnings

import pytest
import torch

from consistency_vae.datamodule import MNISTDataModule
from consistency_vae.multipliers import NuPI
from consistency_vae.packed import PackMember, fit_pack
from consistency_vae.packed import data as pack_data
from consistency_vae.packed.members import build_models
from consistency_vae.packed.step import Pack
from tests.float32 import F32_REL

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SUBSET = 512  # 4 steps of batch 128 per epoch
MEMBERS = [PackMember(0, 0.0), PackMember(0, 3.0), PackMember(1, 1.0, "constrained", 0.5)]
SHARED = {"lr_schedule": "cosine", "multiplier": NuPI()}  # a rule with state (xi): kept in place


def _state(pack: Pack) -> dict[str, torch.Tensor]:
    """Every tensor the step reads or writes, by a name for the failure message."""
    state = {f"param {k}": p for k, p in pack.params.items()}
    state |= {f"grad {k}": p.grad for k, p in pack.params.items()}
    for k, p in pack.params.items():
        state |= {f"adam {k} {s}": v for s, v in pack.optimizer.state[p].items()}
    state |= {f"rule {k}": b for k, b in pack.rule.named_buffers()}
    state |= {"alpha": pack.alpha, "constraint_avg": pack.constraint_avg, "alive": pack.alive}
    return state | {"global_step": pack.global_step, "fail_step": pack.fail_step,
                    "fail_terms": pack.fail_terms}


def _batches(pack: Pack, data_dir, steps: int):
    dm = MNISTDataModule(data_dir=str(data_dir), subset=SUBSET)
    dm.setup("fit")
    seeds = [m.seed for m in pack.members]
    images = dm.train_set.images.to(pack.device)
    for step in range(steps):
        order = pack_data.pack_order(dm.train_set, 128, seeds, step // 4).to(pack.device)
        yield images[order[step % 4]], pack_data.train_noise(seeds, step, 128, 2, pack.device)


def test_the_static_step_keeps_the_storage_of_everything_it_touches(data_dir):
    """The condition of a replay: the second step and later read and write the first's tensors.
    ``static`` is the CUDA default; a CPU pack may set gradients to None instead (faster there)."""
    pack = Pack(MEMBERS, build_models(MEMBERS, SHARED), steps=8, static=True)
    first = None
    for x, noise in _batches(pack, data_dir, 4):
        pack.train_step(x, noise)
        state = {k: (v.data_ptr(), tuple(v.shape)) for k, v in _state(pack).items()}
        first = first or state
        moved = [k for k in first if state[k] != first[k]]
        assert not moved, f"new storage after a step: {moved[:5]}"
    assert pack.rule.xi.shape == (len(MEMBERS),) and bool(pack.rule.xi[2] != 0)  # the rule ran, per member


def test_a_member_failing_mid_run_is_reported_at_its_step_and_frozen_there(data_dir):
    """alpha = inf set after epoch 0 makes member 1's loss inf at the first step of epoch 1 (global
    step 4). fit_pack learns it at the epoch's end, yet reports the step, as the solo run checked
    every step would, and the member's weights are those of the end of epoch 0."""
    at_epoch_end = {}

    def poison(pack: Pack, epoch: int, results) -> None:
        if epoch == 0:
            at_epoch_end.update(pack.member_weights(1))
            pack.alpha[1] = math.inf

    dm = MNISTDataModule(data_dir=str(data_dir), subset=SUBSET)
    results = fit_pack(MEMBERS, dm, max_epochs=3, shared=SHARED, on_epoch_end=poison)
    assert results[1].failed is not None
    assert "non-finite loss at epoch 1, global step 4: loss=inf" in results[1].failed, results[1].failed
    assert len(results[1].epochs) == 1 and results[1].best_epoch == 0
    for name, value in results[1].last_weights.items():
        if name != "alpha":
            # exact: put back (a fixed member's constraint average is NaN: it never ran the rule)
            torch.testing.assert_close(value, at_epoch_end[name], rtol=0, atol=0, equal_nan=True)
    for i in (0, 2):
        assert results[i].failed is None and len(results[i].epochs) == 3


@pytest.mark.parametrize("static", [True, False])
def test_a_failed_member_is_frozen_by_either_step_and_the_others_are_its_pack_without_it(static, data_dir):
    """Pack.step directly: member 1 poisoned after 4 steps fails at step 4 (collect_failures gives
    the solo message), keeps its weights of then, and members 0 and 2 end as in an unpoisoned pack
    (the same computation on the same machine: exactly)."""
    poisoned, clean = (Pack(MEMBERS, build_models(MEMBERS, SHARED), steps=8, static=static) for _ in range(2))
    for step, (x, noise) in enumerate(_batches(poisoned, data_dir, 8)):
        if step == 4:
            kept = poisoned.member_weights(1)
            poisoned.alpha[1] = math.inf
        poisoned.train_step(x, noise)
        clean.train_step(x, noise)
    assert poisoned.collect_failures(steps_per_epoch=4) == [1]
    assert "non-finite loss at epoch 1, global step 4: loss=inf" in poisoned.failed[1]
    for name, value in poisoned.member_weights(1).items():
        if name != "alpha":  # the poison itself
            torch.testing.assert_close(value, kept[name], rtol=0, atol=0, equal_nan=True)
    for i in (0, 2):
        theirs = poisoned.member_weights(i)
        for name, value in clean.member_weights(i).items():
            torch.testing.assert_close(theirs[name], value, rtol=0, atol=0, equal_nan=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the recording fails here for want of a GPU")
def test_a_pack_whose_recording_fails_warns_and_trains_on_uncaptured(data_dir, monkeypatch):
    """Here CUDA itself refuses (no GPU); on a GPU, a driver or an operation may. The pack says so
    once and trains on as an uncaptured static pack does: the same steps, exactly."""
    from consistency_vae.packed.graph import CapturedStep

    plain, failing = (Pack(MEMBERS, build_models(MEMBERS, SHARED), steps=8, static=True) for _ in range(2))
    with monkeypatch.context() as m:  # past the device check: the recording is what must fail here
        m.setattr(failing, "device", torch.device("cuda"))
        step = CapturedStep(failing, warmup=0)
    messages = []
    for i, (x, noise) in enumerate(_batches(plain, data_dir, 8)):
        expected = plain.train_step(x, noise)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values = step(x, noise)
        said = [str(w.message) for w in caught if "uncaptured" in str(w.message)]
        assert len(said) == (1 if i == 0 else 0), caught  # once, at the recording
        messages += said
        torch.testing.assert_close(values, expected, rtol=0, atol=0, equal_nan=True)
    assert step.uncaptured and step.graph is None
    assert "the pack's training step could not be recorded as a CUDA graph" in messages[0]
    for name, p in plain.params.items():
        torch.testing.assert_close(failing.params[name], p, rtol=0, atol=0, msg=name)
    for mine, theirs in ((failing.alpha, plain.alpha), (failing.rule.xi, plain.rule.xi)):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_captured_pack_trains_as_the_uncaptured_one(data_dir):
    """The same 24 steps (3 eager warm-up steps, the recording, 20 replays), eager and captured:
    the same kernels on the same device, so the weights agree to float32 rounding (tests/float32.py),
    and the captured run's learning rate follows the cosine over 48 steps (a rate frozen into the
    graph would stay at 1e-3)."""
    from consistency_vae.packed.graph import CapturedStep

    packs = [Pack(MEMBERS, build_models(MEMBERS, SHARED), steps=48, device="cuda") for _ in range(2)]
    eager, graphed = packs[0], packs[1]
    step = CapturedStep(graphed)
    for (x, noise) in _batches(eager, data_dir, 24):
        values = eager.train_step(x, noise)
        captured = step(x, noise)
        torch.testing.assert_close(captured, values, rtol=F32_REL, atol=F32_REL)
    assert step.graph is not None and step.calls == 24
    for name, p in eager.params.items():
        torch.testing.assert_close(graphed.params[name], p, rtol=F32_REL, atol=1e-6, msg=name)
    for mine, theirs in ((graphed.alpha, eager.alpha), (graphed.rule.xi, eager.rule.xi)):
        torch.testing.assert_close(mine, theirs, rtol=F32_REL, atol=0)
    lr = float(graphed.optimizer.param_groups[0]["lr"])
    assert lr == pytest.approx(1e-3 * (1 + math.cos(math.pi * 24 / 48)) / 2, rel=F32_REL)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_pack_on_cuda_captured_gives_the_uncaptured_run_and_its_failure(data_dir):
    """fit_pack on CUDA, captured (its default) and not, 3 epochs, member 1 poisoned after epoch 0."""

    def poison(pack: Pack, epoch: int, results) -> None:
        if epoch == 0:
            pack.alpha[1] = math.inf  # between replays: the graph reads alpha's storage

    runs = [fit_pack(MEMBERS, MNISTDataModule(data_dir=str(data_dir), subset=SUBSET), max_epochs=3,
                     shared=SHARED, device="cuda", capture=capture, on_epoch_end=poison)
            for capture in (False, True)]
    for plain, captured in zip(*runs, strict=True):
        assert captured.failed == plain.failed
        for a, b in zip(plain.epochs, captured.epochs, strict=True):
            for key in a:
                if not key.startswith("time/"):
                    assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key
    assert "global step 4" in runs[1][1].failed
