"""The packed model and its training step: N members' parameters stacked, one vmapped forward,
one backward, one Adam.

Shapes: N members, B images per batch, D latent dims, T = len(model.TERMS). Every per-member
setting is an (N,) tensor (alpha, constraint average, kl_target, masks): the step has no Python
loop over members and reads nothing back to the host, so that a CUDA graph can record it
(packed/graph.py). For that, every tensor the step reads or writes keeps its storage from one step
to the next (state changes in place): a graph replays on the addresses it recorded.
"""

import copy
import math
from types import SimpleNamespace

import torch
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap

from consistency_vae import guards, schedules
from consistency_vae.guards import NonFiniteLossError
from consistency_vae.model import KL_C, TERMS, ConsistencyVAE
from consistency_vae.packed.members import PackMember, template_of


class Pack:
    """N ``ConsistencyVAE`` members as one batched program.

    ``models``: the members' modules as their solo runs start them (members.build_models); their
    weights are copied into the stack, and the modules are not used again. ``steps``: the run's
    optimizer steps, which the cosine schedule spans (as ``trainer.estimated_stepping_batches``).

    On CUDA, Adam is ``capturable`` (its step count on the device) and its learning rate a device
    tensor that the schedule fills after each step: a learning rate held as a Python number would be
    frozen into a captured graph, and training would go on at the first step's rate, silently.
    """

    def __init__(self, members: list[PackMember], models: list[ConsistencyVAE], steps: int,
                 device: torch.device | str = "cpu", static: bool | None = None):
        self.members, self.device = members, torch.device(device)
        self.hparams = models[0].hparams  # the shared ones (lr, schedule, latent_dim, ...)
        self.template = template_of(models)
        models = [m.to(self.device) for m in models]
        params, buffers = stack_module_state(models)  # {name: (N, ...)}, params are leaves
        self.params = params
        self.alpha, self.constraint_avg = buffers["alpha"], buffers["constraint_avg"]  # (N,) each
        n = len(members)
        self.kl_target = torch.tensor([m.kl_target for m in members], device=self.device)
        self.constrained = torch.tensor([m.alpha_mode == "constrained" for m in members], device=self.device)
        rule = next((m.multiplier for m in models if m.multiplier is not None), None)
        # One rule for every constrained member (they share its settings); its own state (NuPI's
        # xi) gets one row per member here, as the rules are elementwise.
        self.rule = copy.deepcopy(rule)
        if self.rule is not None:
            for name, buf in list(self.rule.named_buffers()):
                self.set_rule_state(name, buf.expand(n).clone() if buf.dim() == 0 else buf)
        self.alive = torch.ones(n, dtype=torch.bool, device=self.device)
        self.global_step = torch.zeros((), dtype=torch.long, device=self.device)  # the next step's
        self.fail_step = torch.full((n,), -1, dtype=torch.long, device=self.device)
        self.fail_terms = torch.zeros(n, len(TERMS), device=self.device)  # (N, T) at that step
        self.failed: dict[int, str] = {}  # member -> the solo run's NonFiniteLossError message
        self.capturable = self.device.type == "cuda"
        # static: every tensor the step touches keeps its storage (what a graph replays on); on a
        # CPU the step may instead set gradients to None and skip the copy that puts a failed
        # member's weights back while none has failed, which costs a pack of 8 about 15% a step
        self.static = self.capturable if static is None else static
        opt = schedules.adam(list(self.params.values()), self.hparams.lr, self.hparams.lr_schedule,
                             SimpleNamespace(estimated_stepping_batches=steps), capturable=self.capturable)
        self.optimizer, self.scheduler = opt["optimizer"], opt.get("lr_scheduler", {}).get("scheduler")

    def _member_forward(self, params: dict, alpha: Tensor, x: Tensor, noise: Tensor) -> dict[str, Tensor]:
        return functional_call(self.template, {**params, "alpha": alpha}, (x, noise), strict=False)

    def forward(self, x: Tensor, noise: Tensor, shared_input: bool = False) -> dict[str, Tensor]:
        """ConsistencyVAE.forward for every member: {term: (N, B, ...)}. x (N, B, C, H, W) and noise
        (N, B, D), or with ``shared_input`` one x (B, C, H, W) and noise (B, D) for all (evaluation)."""
        in_dims = (0, 0, None, None) if shared_input else (0, 0, 0, 0)
        return vmap(self._member_forward, in_dims=in_dims)(self.params, self.alpha, x, noise)

    def train_step(self, x: Tensor, noise: Tensor) -> Tensor:
        """One optimizer step of every live member, then the learning-rate schedule's step; returns
        the step's terms (N, T), detached. ``step`` (what graph.CapturedStep records) and
        ``schedule_step`` (what it runs on the host after each replay)."""
        values = self.step(x, noise)
        self.schedule_step()
        return values

    def step(self, x: Tensor, noise: Tensor) -> Tensor:
        """The optimizer step alone, as ``ConsistencyVAE.training_step`` does it: a member whose terms
        are not all finite fails before its weights or alpha move (its step and terms are kept for
        ``collect_failures``), and is frozen from then on; alpha moves after the loss is built, so
        this step's loss uses the old alpha."""
        out = self.forward(x, noise)
        terms = torch.stack([out[t].mean(-1) for t in TERMS], dim=1)  # (N, T)
        values = terms.detach()
        bad = self.alive & ~values.isfinite().all(dim=1)  # (N,): members failing at this step
        self.fail_step.copy_(torch.where(bad, self.global_step, self.fail_step))
        self.fail_terms.copy_(torch.where(bad[:, None], values, self.fail_terms))
        self.alive.logical_and_(~bad)  # before the loss reads it: backward keeps where's mask
        # Members are independent, so the gradient of the sum is each member's own. A failed
        # member's loss is masked out; its gradient rows may still turn NaN, so its weights are put
        # back after Adam's step (below), and its Adam rows are never saved.
        loss = torch.where(self.alive, terms[:, 0], torch.zeros_like(terms[:, 0])).sum()
        # (a host read when not static: free on a CPU, and never in a graph)
        restore = self.static or not bool(self.alive.all())
        before = [p.detach().clone() for p in self.params.values()] if restore else []
        self.optimizer.zero_grad(set_to_none=not self.static)  # static: zeroed in place
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            for p, old in zip(self.params.values(), before, strict=False):
                keep = self.alive.view(-1, *([1] * (p.dim() - 1)))
                p.copy_(torch.where(keep, p, old))
            if self.rule is not None:  # after backward, which reads alpha
                self._move_alpha(values)
            self.global_step += 1
        return values

    def _move_alpha(self, values: Tensor) -> None:
        """The multiplier rule's update, in place: a rule may return new tensors for its state
        (NuPI's xi), which are copied into the pack's own, for the members it moves."""
        moving = self.constrained & self.alive
        state = dict(self.rule.named_buffers())
        alpha, avg = self.rule(self.alpha, self.constraint_avg, values[:, KL_C], self.kl_target)
        self.alpha.copy_(torch.where(moving, alpha, self.alpha))
        self.constraint_avg.copy_(torch.where(moving, avg, self.constraint_avg))
        for name, new in list(self.rule.named_buffers()):
            state[name].copy_(torch.where(moving, new, state[name]))
            self.set_rule_state(name, state[name])

    def set_rule_state(self, name: str, value: Tensor) -> None:
        owner, _, attr = name.rpartition(".")
        setattr(self.rule.get_submodule(owner), attr, value)

    def schedule_step(self) -> None:
        """The learning rate's step (host side). With a device learning rate (CUDA), the cosine's
        closed form is filled in: the scheduler's own recursion, run on a float32 tensor, would drift
        from the solo run's float64 one by about 1e-7 a step."""
        if self.scheduler is None:
            return
        self.scheduler.step()
        if self.capturable:
            self.set_lr(self.scheduled_lr())

    def scheduled_lr(self) -> float:
        """CosineAnnealingLR's rate at its current step, in closed form (eta_min 0)."""
        base, step = float(self.scheduler.base_lrs[0]), self.scheduler.last_epoch
        return base * (1 + math.cos(math.pi * step / self.scheduler.T_max)) / 2

    def set_lr(self, value: float) -> None:
        """Adam's learning rate: a float on a CPU, the pack's one device tensor (filled) on CUDA."""
        group = self.optimizer.param_groups[0]
        if not self.capturable:
            group["lr"] = value
        elif isinstance(group["lr"], Tensor):
            group["lr"].fill_(value)
        else:  # a state_dict loaded from a solo checkpoint replaced the tensor by its float
            group["lr"] = torch.tensor(value, device=self.device)

    def collect_failures(self, steps_per_epoch: int) -> list[int]:
        """Host side, after some steps (fit_pack: each epoch's end): the members that failed since
        the last call, each with its solo run's message (one process, checked every step)."""
        new = [i for i in (~self.alive).nonzero().flatten().tolist() if i not in self.failed]
        for i in new:
            step = int(self.fail_step[i])
            try:
                one = torch.ones(())
                guards.raise_if_nonfinite(one, 1, dict(zip(TERMS, self.fail_terms[i], strict=True)),
                                          bad_here=one, epoch=step // steps_per_epoch, step=step,
                                          rank=0, world_size=1)
            except NonFiniteLossError as err:
                self.failed[i] = str(err)
        return new

    @torch.no_grad()
    def member_weights(self, i: int) -> dict[str, Tensor]:
        """Member i's parameters and buffers as its solo model's state_dict names them (a copy);
        a failed member's are those of its last good step (the step puts them back)."""
        state = {name: p[i].detach().clone() for name, p in self.params.items()}
        return state | {"alpha": self.alpha[i].clone(), "constraint_avg": self.constraint_avg[i].clone()}

    def load_member(self, model: ConsistencyVAE, i: int) -> ConsistencyVAE:
        """Member i's weights and alpha in a solo model (to evaluate or save it as a solo run's)."""
        model.load_state_dict(self.member_weights(i), strict=False)
        return model
