"""Packed training: N grid points of one shape trained in one process as one batched program.

Grid points that differ only in values that keep tensor shapes (alpha, seed, fixed or constrained
mode, kl_target) stack into one model: ``torch.func.stack_module_state`` gives each parameter a
leading member axis (N, ...), and ``vmap(functional_call(template, ...))`` runs the model's own
``ConsistencyVAE.forward`` (so ``networks.py`` and ``losses.py``) over all N at once. One Adam over
the stacked tensors is N Adams, as Adam is elementwise. Each member is its solo run:

- the same initial weights: ``ConsistencyVAE(...)`` built after seeding torch with its seed, as
  LightningCLI's ``seed_everything`` does before it instantiates the model (``members.py``);
- the same batches: the solo run's training sampler for that seed and epoch (``data.py``);
- the same training noise: ``noise.train_noise(seed, global_step, rank 0)``;
- its own alpha, constraint average and kl_target, (N,) tensors that the rules of
  ``multipliers.py`` update elementwise (``step.py``);
- its own checkpoint selection by ``val/selection`` (``fit.py``);
- a member whose loss goes non-finite is frozen at its last good weights and reported failed with
  the solo run's message (``guards.py``); the others go on.

On CUDA the step is recorded once as a CUDA graph and replayed (``graph.py``): the step reads
nothing back to the host and keeps its tensors' storage, so a graph can hold it.

``sweep --pack N`` runs a pack per process (``run.py``), each member writing its ordinary run
folder (``member_run.py``) and Lightning checkpoints (``checkpoint.py``). Not packed yet
(docs/scaling.md): evaluation, which ``reproduce`` runs one checkpoint per process at a time.
"""

from consistency_vae.packed.fit import MemberResult, fit_pack
from consistency_vae.packed.members import PackMember

__all__ = ["MemberResult", "PackMember", "fit_pack"]
