"""The packed model and its training step: N members' parameters stacked, one vmapped forward,
one backward, one Adam.

Shapes: N members, B images per batch, D latent dims, T = len(model.TERMS). Every per-member
setting is an (N,) tensor (alpha, constraint average, kl_target, masks): the step has no Python
loop over members, except at the (rare) step where one fails, to write its message.
"""

import copy
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
    """

    def __init__(self, members: list[PackMember], models: list[ConsistencyVAE], steps: int,
                 device: torch.device | str = "cpu"):
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
        # xi) broadcasts to (N,) at the first update, as the rules are elementwise.
        self.rule = copy.deepcopy(rule)
        self.alive = torch.ones(n, dtype=torch.bool, device=self.device)
        self.failed: dict[int, str] = {}  # member -> the solo run's NonFiniteLossError message
        self.frozen: dict[int, dict[str, Tensor]] = {}  # member -> its last good weights
        opt = schedules.adam(self.params.values(), self.hparams.lr, self.hparams.lr_schedule,
                             SimpleNamespace(estimated_stepping_batches=steps))
        self.optimizer, self.scheduler = opt["optimizer"], opt.get("lr_scheduler", {}).get("scheduler")

    def _member_forward(self, params: dict, alpha: Tensor, x: Tensor, noise: Tensor) -> dict[str, Tensor]:
        return functional_call(self.template, {**params, "alpha": alpha}, (x, noise), strict=False)

    def forward(self, x: Tensor, noise: Tensor, shared_input: bool = False) -> dict[str, Tensor]:
        """ConsistencyVAE.forward for every member: {term: (N, B, ...)}. x (N, B, C, H, W) and noise
        (N, B, D), or with ``shared_input`` one x (B, C, H, W) and noise (B, D) for all (evaluation)."""
        in_dims = (0, 0, None, None) if shared_input else (0, 0, 0, 0)
        return vmap(self._member_forward, in_dims=in_dims)(self.params, self.alpha, x, noise)

    def train_step(self, x: Tensor, noise: Tensor, *, epoch: int, step: int) -> Tensor:
        """One optimizer step of every live member; returns the step's terms (N, T), detached.

        As ``ConsistencyVAE.training_step`` on a CPU (one process, a check every step): a member
        whose terms are not all finite fails before its weights or alpha move; alpha moves after
        the loss is built, so this step's loss uses the old alpha."""
        out = self.forward(x, noise)
        terms = torch.stack([out[t].mean(-1) for t in TERMS], dim=1)  # (N, T)
        values = terms.detach()
        finite = values.isfinite().all(dim=1)  # (N,)
        if bool((self.alive & ~finite).any()):  # one host read per step: free on a CPU
            self._fail(self.alive & ~finite, values, epoch, step)
        if self.rule is not None:
            alpha, avg = self.rule(self.alpha, self.constraint_avg, values[:, KL_C], self.kl_target)
            moving = self.constrained & self.alive
            self.alpha = torch.where(moving, alpha, self.alpha)
            self.constraint_avg = torch.where(moving, avg, self.constraint_avg)
        # Members are independent, so the gradient of the sum is each member's own. A failed
        # member's loss is masked out; its rows may still turn NaN, but it is frozen (self.frozen).
        loss = torch.where(self.alive, terms[:, 0], torch.zeros_like(terms[:, 0])).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return values

    def _fail(self, bad: Tensor, values: Tensor, epoch: int, step: int) -> None:
        for i in bad.nonzero().flatten().tolist():
            try:  # the solo run's own check and message (one process, checked every step)
                one = torch.ones(())
                guards.raise_if_nonfinite(one, 1, dict(zip(TERMS, values[i], strict=True)), bad_here=one,
                                          epoch=epoch, step=step, rank=0, world_size=1)
            except NonFiniteLossError as err:
                self.failed[i] = str(err)
            self.frozen[i] = self.member_weights(i)
        self.alive &= ~bad

    @torch.no_grad()
    def member_weights(self, i: int) -> dict[str, Tensor]:
        """Member i's parameters and buffers as its solo model's state_dict names them (a copy);
        a failed member's are those of its last good step."""
        if i in self.frozen:
            return {k: v.clone() for k, v in self.frozen[i].items()}
        state = {name: p[i].detach().clone() for name, p in self.params.items()}
        return state | {"alpha": self.alpha[i].clone(), "constraint_avg": self.constraint_avg[i].clone()}

    def load_member(self, model: ConsistencyVAE, i: int) -> ConsistencyVAE:
        """Member i's weights and alpha in a solo model (to evaluate or save it as a solo run's)."""
        model.load_state_dict(self.member_weights(i), strict=False)
        return model
