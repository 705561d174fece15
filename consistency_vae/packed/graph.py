"""The packed training step recorded once as a CUDA graph and replayed (``fit_pack(capture=True)``).

A pack's step is about a hundred small kernels; on a GPU the host spends longer launching them than
the device spends running them. A CUDA graph replays the whole step (forward, backward, Adam and
the multiplier rule) in one launch. What makes ``Pack.step`` replayable:

- it reads nothing back to the host (no ``.item()``, no branch on a tensor): failures are masks,
  reported after the epoch (``Pack.collect_failures``);
- every tensor it touches keeps its storage: state is updated in place, gradients are zeroed in
  place (not set to None), and Adam is ``capturable`` with its learning rate a device tensor that
  ``Pack.schedule_step`` fills on the host between replays;
- its inputs are copied into static buffers before each replay; its output, the step's terms, is
  a static tensor that the next replay overwrites (the caller reads it before then).

The first ``warmup`` calls run the step eagerly on a side stream, as real training steps (CUDA's
lazy initialisation, cuBLAS workspaces and Adam's state are allocated then, outside the graph);
the next call records the graph and replays it for that same batch. Should the recording raise (a
driver, a device or an operation that refuses it), the pack warns and trains on uncaptured, as a
solo fit does (step_graph.py): a recording runs no kernel, so the pack's tensors are as they were,
and the one thing the step sets on the host, a multiplier rule's state (NuPI's xi), is put back.
PyTorch's recipe:
https://pytorch.org/docs/stable/notes/cuda.html#whole-network-capture. On a CPU there is nothing
to capture: ``fit_pack`` calls the step directly, the same code.
"""

import torch
from torch import Tensor

from consistency_vae.packed.step import Pack
from consistency_vae.step_graph import WARMUP, on_side_stream, recording_failed, warn_uncaptured


class CapturedStep:
    """``Pack.train_step`` as a replayed CUDA graph: ``captured(x, noise)`` -> terms (N, T)."""

    def __init__(self, pack: Pack, warmup: int = WARMUP):
        if pack.device.type != "cuda" or not pack.static:
            raise ValueError(f"a CUDA graph needs a static pack on a CUDA device, not "
                             f"{'a' if pack.static else 'a non-static'} pack on {pack.device}")
        self.pack, self.warmup, self.calls = pack, warmup, 0
        self.uncaptured = False  # set once a recording has failed
        self.graph: torch.cuda.CUDAGraph | None = None
        self.x = self.noise = self.values = None  # the static buffers, set at the capture

    def __call__(self, x: Tensor, noise: Tensor) -> Tensor:
        self.calls += 1
        if self.uncaptured:
            return self.pack.train_step(x, noise)
        if self.graph is not None:
            self.x.copy_(x)
            self.noise.copy_(noise)
            self.graph.replay()
        elif self.calls <= self.warmup:
            values = on_side_stream(self.pack.step, x, noise)
            self.pack.schedule_step()
            return values.clone()  # as the replays' callers read it: before the next step
        elif not self._capture(x, noise):
            return self.pack.train_step(x, noise)
        else:
            self.graph.replay()  # recording ran nothing: this batch's step is the first replay
        self.pack.schedule_step()
        return self.values

    def _capture(self, x: Tensor, noise: Tensor) -> bool:
        """Record the step; False (said, and the step uncaptured from then on) if that raised."""
        self.x, self.noise = x.clone(), noise.clone()
        rule_state = dict(self.pack.rule.named_buffers()) if self.pack.rule is not None else {}
        try:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.values = self.pack.step(self.x, self.noise)
            return True
        except RuntimeError as err:
            for name, value in rule_state.items():
                self.pack.set_rule_state(name, value)
            warn_uncaptured("the pack's training step", recording_failed(err), stacklevel=3)
            self.graph, self.uncaptured = None, True
            return False
