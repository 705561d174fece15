"""A solo run's training step, forward and backward, recorded once as a CUDA graph and replayed.

On a GPU the step of this small MLP is about a hundred kernel launches and little arithmetic: the
host launching them is the bottleneck. Lightning has no CUDA-graph support (its issues 10174,
14213, 18501), and NVIDIA NeMo's CUDAGraphCallback patches Lightning's internals to get one. This
keeps Lightning's own loop and hooks and changes only what happens inside ``training_step``:

- ``GraphStep(x, noise)`` runs the model's forward and backward and leaves the gradients in the
  parameters' ``.grad``; ``ConsistencyVAE.backward`` and ``optimizer_zero_grad`` then do nothing
  (the gradients must stay in the storage the graph writes). Everything after the backward stays
  Lightning's: gradient clipping, Adam and the learning-rate schedule (a rate held on the host is
  safe there, outside the graph), ``self.log``, callbacks, checkpoints;
- what the graph reads keeps its storage: the batch and the noise are copied into static buffers
  (the noise is drawn before the step, ``noise.train_noise``), the parameters are updated in place
  by Adam, and a constrained run's alpha in place (``ConsistencyVAE._update_alpha``);
- the first ``WARMUP`` steps run eagerly (CUDA's lazy set-up happens outside the graph), the next
  is recorded and replayed, and its result is checked once against the eager step on the same
  batch: should they differ beyond float32 rounding, or the recording fail, the run warns and goes
  on uncaptured. A batch of another shape (a loader that keeps its last, short batch) runs eagerly.

The step is captured only where that is the same training: one CUDA device, no gradient
accumulation (a graph's backward writes the gradients, it does not add to them), 32-bit precision
(mixed precision scales the loss and casts on the host). ``CONSISTENCY_VAE_CUDA_GRAPH=0`` turns
it off, for packs too (packed/graph.py), should a device refuse the capture.
PyTorch's recipe: https://pytorch.org/docs/stable/notes/cuda.html#whole-network-capture
"""

import os
import warnings
from collections.abc import Callable

import torch
from lightning import Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

CUDA_GRAPH_ENV = "CONSISTENCY_VAE_CUDA_GRAPH"  # "0": every training step on CUDA runs uncaptured
WARMUP = 3  # eager steps before the capture (PyTorch's recipe uses 3)

# (x, noise) -> (the loss to differentiate, the step's terms (T,) detached)
StepFunction = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def wanted() -> bool:
    """False where the environment turns CUDA graphs off (CONSISTENCY_VAE_CUDA_GRAPH=0)."""
    return os.environ.get(CUDA_GRAPH_ENV, "1") != "0"


def refusal(trainer: Trainer) -> str | None:
    """Why this fit's step is not captured, or None where it is."""
    if trainer.strategy.root_device.type != "cuda":
        return "not on a CUDA device"
    if not wanted():
        return f"{CUDA_GRAPH_ENV}=0"
    if trainer.world_size > 1:
        return f"{trainer.world_size} processes (the gradients' all-reduce runs in the backward)"
    if trainer.accumulate_grad_batches != 1:
        return f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}"
    if trainer.precision != "32-true":
        return f"trainer.precision={trainer.precision}"
    return None


def on_side_stream(fn: Callable, *args):
    """``fn(*args)`` on a fresh side stream, after the current stream's work and before its next:
    the recipe's warm-up, whose lazy CUDA set-up then stays off the stream that records."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn(*args)
    torch.cuda.current_stream().wait_stream(side)
    return out


def warn_uncaptured(what: str, why: str, stacklevel: int) -> None:
    """Say once that ``what`` (a step) trains on uncaptured, and why."""
    warnings.warn(f"{what} {why}; training goes on uncaptured (set {CUDA_GRAPH_ENV}=0 to skip the "
                  "capture)", RuntimeWarning, stacklevel=stacklevel + 1)


def recording_failed(err: RuntimeError) -> str:
    return f"could not be recorded as a CUDA graph ({str(err).splitlines()[0]})"


def for_fit(module: nn.Module, step: StepFunction, trainer: Trainer) -> "GraphStep | None":
    """The captured step of this fit, or None (Lightning's own backward), saying which on CUDA."""
    why = refusal(trainer)
    if trainer.strategy.root_device.type == "cuda":
        rank_zero_info(f"Training step: {'a CUDA graph' if why is None else f'not captured ({why})'}")
    return None if why is not None else GraphStep(module, step, capture=True)


class GraphStep:
    """``graph_step(x, noise)`` -> (loss, terms) as ``step`` returns them, the step's gradients
    left in ``.grad``, for the model's ``training_step``: its ``backward`` hook then does nothing.

    ``capture``: after ``warmup`` eager steps, record the step as a CUDA graph and replay it.
    Without it, every step runs eagerly, the same code: the CPU tests run it so."""

    def __init__(self, module: nn.Module, step: StepFunction, capture: bool, warmup: int = WARMUP):
        self.step, self.capture, self.warmup, self.calls = step, capture, warmup, 0
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.grads: list[Tensor] = []  # where the gradients are written (the graph's, once recorded)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.x = self.noise = self.values = None  # the static buffers, set at the capture

    def __call__(self, x: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """(the loss, the terms (T,)): copies, since a replay overwrites its output."""
        values = self._run(x, noise).clone()
        return values[0], values

    def _run(self, x: Tensor, noise: Tensor) -> Tensor:
        self.calls += 1
        if self.graph is not None and x.shape == self.x.shape:
            self.x.copy_(x)
            self.noise.copy_(noise)
            self._attach()
            self.graph.replay()
            return self.values
        if self.capture and self.graph is None and self.calls > self.warmup:
            return self._record(x, noise)
        if self.capture and self.graph is None:  # warm-up, on a side stream as the recipe asks
            return on_side_stream(self._eager, x, noise)
        return self._eager(x, noise)

    def _eager(self, x: Tensor, noise: Tensor) -> Tensor:
        """The step without a graph, its gradients written into the same storage (0 + g is g)."""
        loss, values = self.step(x, noise)
        self._attach()
        for p in self.params:
            if p.grad is not None:
                p.grad.zero_()
        loss.backward()
        self.grads = [p.grad for p in self.params]
        return values

    def _attach(self) -> None:
        """Point ``.grad`` back at the step's gradients: Lightning sets them to None before each
        validation (``on_validation_model_zero_grad``), and Adam would skip parameters whose
        gradient is None while the graph goes on writing the old storage. (None before a first step.)"""
        for p, g in zip(self.params, self.grads or [None] * len(self.params), strict=True):
            p.grad = g

    def _record(self, x: Tensor, noise: Tensor) -> Tensor:
        self.x, self.noise = x.clone(), noise.clone()
        for p in self.params:
            p.grad = None  # the captured backward allocates them in the graph's pool, and writes them
        try:
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: a user's DataLoader threads (pin_memory) may call CUDA while this one records
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                loss, self.values = self.step(self.x, self.noise)
                loss.backward()
        except RuntimeError as err:  # a driver, a device or an operation that refuses the capture
            self._stop_capturing(recording_failed(err))
            return self._eager(x, noise)  # its gradients go back where the warm-up left them
        self.grads = [p.grad for p in self.params]
        self.graph.replay()  # recording ran nothing: this batch's step is the first replay
        return self._checked()

    def _checked(self) -> Tensor:
        """The first replay against the eager step on the same batch (one host sync, once)."""
        loss, values = self.step(self.x, self.noise)
        if not bool(values.isfinite().all()):
            return self.values  # nothing to compare: the run stops at this step (guards.py)
        grads = torch.autograd.grad(loss, self.params)
        pairs = [(self.values, values), *((p.grad, g) for p, g in zip(self.params, grads, strict=True))]
        # the same kernels on the same inputs: equal but for float32 rounding of the larger values
        if all(torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max())) for a, b in pairs):
            return self.values
        self._stop_capturing("replayed as a CUDA graph differs from the step run eagerly on the same batch")
        for p, g in zip(self.params, grads, strict=True):
            p.grad.copy_(g)
        return values

    def _stop_capturing(self, why: str) -> None:
        warn_uncaptured("the training step", why, stacklevel=4)
        self.graph, self.capture = None, False
