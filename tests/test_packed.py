"""Packed training (consistency_vae/packed): a member of a pack is its solo run.

The solo side is the real thing: LightningCLI with configs/mnist.yaml and the member's flags
(seed_everything, alpha, alpha_mode, kl_target), instantiated as `consistency-vae fit` does, then
``trainer.fit`` with a recording callback added (no logger, checkpoints or figure callbacks: they
change no weight). The pack holds four members: two alphas (0, the plain VAE, and 3), two seeds,
one of them constrained; each is compared with its own solo run.
"""

import pytest
import torch
from lightning import Callback

from consistency_vae.datamodule import MNISTDataModule
from consistency_vae.guards import NonFiniteLossError
from consistency_vae.model import TERMS
from consistency_vae.packed import PackMember, fit_pack
from consistency_vae.packed import data as pack_data
from consistency_vae.packed.members import build_models
from consistency_vae.packed.step import Pack
from consistency_vae.training_cli import lightning_cli
from tests.conftest import ROOT
from tests.float32 import F32_REL, approx_f32

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SUBSET = 512  # 4 training steps of batch 128 per epoch, one validation batch of 512
MEMBERS = [PackMember(0, 0.0), PackMember(0, 3.0), PackMember(1, 0.0), PackMember(1, 3.0, "constrained", 0.5)]
LR, ADAM_EPS = 1e-3, 1e-8  # configs/mnist.yaml's lr; torch.optim.Adam's default eps


class FirstStep(Callback):
    """The gradient and the weights of the solo run's first optimizer step."""

    grads: dict[str, torch.Tensor] | None = None
    weights: dict[str, torch.Tensor] | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.grads is None:
            self.grads = {k: p.grad.clone() for k, p in pl_module.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.weights is None:
            self.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}


def solo_fit(member: PackMember, root, data_dir) -> tuple[FirstStep, object]:
    """One epoch of the member's solo run; (its first step, the trainer after it)."""
    cli = lightning_cli([
        "--config", str(ROOT / "configs/mnist.yaml"), f"--seed_everything={member.seed}",
        f"--model.alpha={member.alpha}", f"--model.alpha_mode={member.alpha_mode}",
        f"--model.kl_target={member.kl_target}", f"--data.data_dir={data_dir}", f"--data.subset={SUBSET}",
        "--trainer.max_epochs=1", "--trainer.logger=false", "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={root}"], run=False)
    first = FirstStep()
    cli.trainer.callbacks.append(first)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return first, cli.trainer


@pytest.fixture(scope="module")
def solo_runs(tmp_path_factory, data_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the module-scoped fixture runs before the per-test one_thread
    try:
        return [solo_fit(m, tmp_path_factory.mktemp(f"solo{i}"), data_dir) for i, m in enumerate(MEMBERS)]
    finally:
        torch.set_num_threads(threads)


def test_a_member_after_one_step_is_its_solo_run(solo_runs, data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), subset=SUBSET)
    dm.setup("fit")
    seeds = [m.seed for m in MEMBERS]
    pack = Pack(MEMBERS, build_models(MEMBERS), steps=4)
    x = dm.train_set.images[pack_data.pack_order(dm.train_set, 128, seeds, 0)[0]]  # (N, B, C, H, W)
    pack.train_step(x, pack_data.train_noise(seeds, 0, 128, 2, pack.device))
    for i, (first, _) in enumerate(solo_runs):
        weights = pack.member_weights(i)
        for name, solo_grad in first.grads.items():
            grad = pack.params[name].grad[i]
            # A gradient element is a sum over the batch (and, for the encoder, two passes) of
            # products; the pack's batched GEMMs add them in another order, which moves the sum by a
            # few float32 roundings of the terms summed (tests/float32.py). The largest gradient of
            # the tensor bounds their scale: atol F32_REL * max|g|, rtol F32_REL.
            scale = solo_grad.abs().max().item()
            torch.testing.assert_close(grad, solo_grad, rtol=F32_REL, atol=F32_REL * scale)
            # Adam's first step is w -= lr * g / (|g| + eps): where |g| >= 1e-4 its sensitivity to g,
            # lr * eps / |g|, turns a 1e-5 relative error of g into < 1e-12 of w, so the weights
            # agree to float32 rounding of w itself (|w| <= 0.7 here: rtol 1e-5, atol 1e-6). Where
            # |g| is near eps (pixels that are almost never lit) the step is any value in
            # [-lr, lr] that rounding picks, in the solo run as in the pack: checked only to that bound.
            conditioned = solo_grad.abs() >= 1e-4
            torch.testing.assert_close(weights[name][conditioned], first.weights[name][conditioned],
                                       rtol=1e-5, atol=1e-6)
            assert (weights[name] - first.weights[name]).abs().max() <= 2 * LR
        torch.testing.assert_close(weights["alpha"], first.weights["alpha"], rtol=1e-6, atol=0)


def test_a_member_after_one_epoch_is_its_solo_run(solo_runs, data_dir):
    results = fit_pack(MEMBERS, MNISTDataModule(data_dir=str(data_dir), subset=SUBSET), max_epochs=1)
    for member, result, (_, trainer) in zip(MEMBERS, results, solo_runs, strict=True):
        assert result.failed is None and result.best_epoch == 0 and len(result.epochs) == 1
        solo = {k: float(v) for k, v in trainer.callback_metrics.items()}
        row = result.epochs[0]
        # After 4 steps the weights differ where Adam's step was ill-conditioned (above): weights
        # of pixels that are almost never lit, which move the outputs by almost nothing; the rest is
        # float32 rounding of GEMMs in another order (tests/float32.py: rel 1e-5, abs 1e-5 per
        # latent dim). Measured: at most 5e-7 relative, on val/kl.
        for key in [f"train/{t}_epoch" for t in TERMS] + [f"val/{t}" for t in TERMS] + ["val/selection"]:
            assert row[key] == approx_f32(solo[key], latent_dim=2), (member.name(), key)
        assert row["train/alpha_epoch"] == pytest.approx(solo["train/alpha_epoch"], rel=F32_REL)


def test_a_member_that_goes_non_finite_fails_as_its_solo_run_and_the_others_go_on(tmp_path, data_dir):
    """alpha = 1e39 is inf in float32: the loss is inf at the first step, in the solo run as in the pack."""
    bad = PackMember(1, 1e39)
    with pytest.raises(NonFiniteLossError) as solo_error:
        solo_fit(bad, tmp_path / "solo", data_dir)
    good = PackMember(0, 3.0)
    dm = MNISTDataModule(data_dir=str(data_dir), subset=SUBSET)
    with_bad = fit_pack([good, bad], dm, max_epochs=2)
    alone = fit_pack([good], dm, max_epochs=2)
    assert with_bad[1].failed == str(solo_error.value)
    assert "non-finite loss at epoch 0, global step 0: loss=inf" in with_bad[1].failed
    assert with_bad[1].epochs == [] and with_bad[1].best_epoch is None
    initial = build_models([bad])[0].state_dict()
    for name, value in with_bad[1].last_weights.items():  # frozen before its first step
        torch.testing.assert_close(value, initial[name], rtol=0, atol=0, equal_nan=True)  # exact
    assert with_bad[0].failed is None and len(with_bad[0].epochs) == 2
    for name, value in alone[0].last_weights.items():  # the good member is the pack of one
        torch.testing.assert_close(with_bad[0].last_weights[name], value, rtol=1e-5, atol=1e-6,
                                   equal_nan=True)
