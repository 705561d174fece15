"""A solo fit's step as a CUDA graph (consistency_vae/step_graph.py).

On any device: the step that a graph can record (forward and backward inside ``training_step``,
its gradients left in ``.grad``, Lightning's zero_grad and backward skipped, alpha updated in place)
trains exactly as Lightning's own backward does: the same kernels on the same machine, so equal
bits. The capture is refused, with the setting named, where it would change the training; the one
check of the first replay against the eager step warns and falls back when they differ, and so does
a recording that fails. On a GPU (marked ``gpu``): a captured fit trains as an uncaptured one, to
float32 tolerance, each replay on its own batch.
"""

import warnings
from types import SimpleNamespace

import pytest
import torch
from lightning import Callback, Trainer

from consistency_vae import step_graph
from consistency_vae.datamodule import MNISTDataModule
from consistency_vae.model import ConsistencyVAE
from consistency_vae.multipliers import NuPI
from consistency_vae.noise import train_noise
from tests.float32 import F32_REL

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

RUNS = {  # a cosine schedule, clipping (Lightning clips the step's gradients), alpha in place
    "fixed": ({"alpha": 1.0, "lr_schedule": "cosine"}, {"gradient_clip_val": 0.5}),
    "constrained": ({"alpha": 0.5, "alpha_mode": "constrained", "kl_target": 0.5, "multiplier": NuPI}, {}),
    "plain": ({"alpha": 0.0}, {}),
}  # a rule is a class here: each fit builds its own (the rule's state, NuPI's xi, is the run's)


class Storage(Callback):
    """Where each step left every tensor that a graph reads or writes: weights, gradients, alpha.
    (The multiplier rule runs after the graph, on the host's orders: its state may move.)"""

    def __init__(self):
        self.steps: list[dict[str, int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        tensors = {"alpha": pl_module.alpha} | dict(pl_module.named_parameters())
        tensors |= {f"{k}.grad": p.grad for k, p in pl_module.named_parameters()}
        self.steps.append({k: t.data_ptr() for k, t in tensors.items()})


def fit(data_dir, tmp_path, model_args: dict, trainer_args: dict, accelerator: str = "cpu",
        subset: int = 512, epochs: int = 2) -> ConsistencyVAE:
    torch.manual_seed(0)
    model = ConsistencyVAE(**{k: v() if k == "multiplier" else v for k, v in model_args.items()})
    trainer = Trainer(max_epochs=epochs, accelerator=accelerator, devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=2, default_root_dir=tmp_path, **trainer_args)
    trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), subset=subset))
    return model


def record_steps(monkeypatch, capture: bool) -> list[step_graph.GraphStep]:
    """Make every fit use a GraphStep (captured or not) and keep it to look at after the fit."""
    made = []

    def for_fit(module, step, trainer):
        made.append(step_graph.GraphStep(module, step, capture=capture))
        return made[-1]

    monkeypatch.setattr(step_graph, "for_fit", for_fit)
    return made


@pytest.mark.parametrize("run", RUNS)
def test_a_fit_through_the_graph_step_trains_as_lightnings_own_backward(data_dir, tmp_path, monkeypatch, run):
    """Uncaptured (the CPU): 8 steps, every weight, alpha and the rule's state equal, bit for bit."""
    model_args, trainer_args = RUNS[run]
    own = fit(data_dir, tmp_path, model_args, trainer_args).state_dict()
    made, storage = record_steps(monkeypatch, capture=False), Storage()
    graphed = fit(data_dir, tmp_path, model_args, trainer_args | {"callbacks": [storage]}).state_dict()
    assert len(made) == 1 and made[0].calls == 8  # 4 steps of batch 128 an epoch, 2 epochs
    for later in storage.steps[1:]:  # what a replay reads and writes stays where it was recorded
        assert later == storage.steps[0]
    assert graphed.keys() == own.keys()
    for name, value in own.items():  # equal bits (constraint_avg is NaN in fixed mode)
        torch.testing.assert_close(graphed[name], value, rtol=0, atol=0, equal_nan=True, msg=name)
    if run == "constrained":
        assert float(own["alpha"]) != 0.5  # the multiplier moved: the in-place update was tested


def _trainer(device="cuda", world_size=1, accumulate=1, precision="32-true"):
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), world_size=world_size,
                           accumulate_grad_batches=accumulate, precision=precision)


@pytest.mark.parametrize(("trainer", "named"), [
    (_trainer("cpu"), "not on a CUDA device"),
    (_trainer(world_size=2), "2 processes"),
    (_trainer(accumulate=4), "trainer.accumulate_grad_batches=4"),
    (_trainer(precision="bf16-mixed"), "trainer.precision=bf16-mixed"),
])
def test_the_capture_is_refused_where_it_would_change_the_training(trainer, named):
    assert named in step_graph.refusal(trainer)


def test_the_environment_turns_the_capture_off(monkeypatch):
    assert step_graph.refusal(_trainer()) is None
    monkeypatch.setenv(step_graph.CUDA_GRAPH_ENV, "0")
    assert step_graph.refusal(_trainer()) == "CONSISTENCY_VAE_CUDA_GRAPH=0"


def _batch(data_dir, n: int, step: int = 0, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    dm = MNISTDataModule(data_dir=str(data_dir), subset=1024)
    dm.setup("fit")
    return dm.train_set.images[step * n:(step + 1) * n].to(device), train_noise(n, 2, 0, step, 0, device)


def test_a_replay_that_differs_from_the_eager_step_warns_and_goes_on_uncaptured(data_dir):
    """The one check after the recording (step_graph.GraphStep._checked), with a replay's output
    made wrong by hand: the run warns, keeps the eager step's terms and gradients, stops capturing."""
    torch.manual_seed(0)
    model = ConsistencyVAE()
    step = step_graph.GraphStep(model, model._step_terms, capture=True)
    step.x, step.noise = _batch(data_dir, 128)
    loss, values = model._step_terms(step.x, step.noise)
    expected = torch.autograd.grad(loss, step.params)
    step.values = values.clone()
    for p, g in zip(step.params, expected, strict=True):
        p.grad = g.clone()
    assert step._checked() is step.values and step.capture  # the replay agrees: kept
    step.values = values + 1
    for p in step.params:
        p.grad.mul_(2)
    with pytest.warns(RuntimeWarning, match="training goes on uncaptured"):
        kept = step._checked()
    assert torch.equal(kept, values) and not step.capture and step.graph is None
    for p, g in zip(step.params, expected, strict=True):
        assert torch.equal(p.grad, g)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the recording fails here for want of a GPU")
def test_a_recording_that_fails_warns_and_trains_on_uncaptured(data_dir):
    """Here CUDA itself refuses (no GPU); on a GPU, a driver or an operation may: the step warns,
    returns the eager step's terms and gradients, and runs eagerly from then on."""
    torch.manual_seed(0)
    model = ConsistencyVAE()
    step = step_graph.GraphStep(model, model._step_terms, capture=True, warmup=0)
    for i in range(2):
        x, noise = _batch(data_dir, 128, step=i)
        loss, expected = model._step_terms(x, noise)
        grads = torch.autograd.grad(loss, step.params)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, values = step(x, noise)
        said = [str(w.message) for w in caught if "uncaptured" in str(w.message)]
        if i == 0:  # said once, at the recording; from then on the step runs eagerly without a word
            assert len(said) == 1 and "could not be recorded as a CUDA graph" in said[0], caught
        else:
            assert said == []
        assert torch.equal(values, expected) and not step.capture and step.graph is None
        for p, g in zip(step.params, grads, strict=True):
            assert torch.equal(p.grad, g)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("run", ["fixed", "constrained"])
def test_a_captured_fit_trains_as_an_uncaptured_one(data_dir, tmp_path, monkeypatch, run):
    """32 steps on CUDA (3 eager, the recording and its check, 28 replays), captured (the default)
    and not (CONSISTENCY_VAE_CUDA_GRAPH=0): the same kernels, so the weights, alpha and the rule's
    state agree to float32 rounding (tests/float32.py); the graph was recorded and kept."""
    model_args, trainer_args = RUNS[run]
    made = []
    real = step_graph.for_fit
    monkeypatch.setattr(step_graph, "for_fit", lambda *args: made.append(real(*args)) or made[-1])
    monkeypatch.setenv(step_graph.CUDA_GRAPH_ENV, "0")
    plain = fit(data_dir, tmp_path, model_args, trainer_args, "cuda", subset=2048).state_dict()
    assert made == [None]
    monkeypatch.delenv(step_graph.CUDA_GRAPH_ENV)
    captured = fit(data_dir, tmp_path, model_args, trainer_args, "cuda", subset=2048).state_dict()
    graph = made[1]
    assert graph is not None and graph.graph is not None and graph.capture and graph.calls == 32
    for name, value in plain.items():
        torch.testing.assert_close(captured[name], value, rtol=F32_REL, atol=1e-6, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_each_replay_reads_its_own_batch_and_a_short_batch_runs_eagerly(data_dir):
    """No optimizer step between calls: each call's terms and gradients must be the eager ones of
    its own batch (a stale static buffer would give the last batch's), a short batch included."""
    torch.manual_seed(0)
    model = ConsistencyVAE(alpha=1.0).cuda()
    step = step_graph.GraphStep(model, model._step_terms, capture=True)
    for i, n in enumerate([128] * 5 + [100, 128, 128]):
        x, noise = _batch(data_dir, n, step=i, device="cuda")
        _, values = step(x, noise)
        loss, expected = model._step_terms(x, noise)
        torch.testing.assert_close(values, expected, rtol=F32_REL, atol=F32_REL, msg=f"call {i}")
        for p, g in zip(step.params, torch.autograd.grad(loss, step.params), strict=True):
            torch.testing.assert_close(p.grad, g, rtol=F32_REL, atol=1e-6, msg=f"call {i}")
    assert step.graph is not None and step.x.shape[0] == 128
