"""The optimiser and its learning-rate schedule (``model.lr_schedule``).

- ``constant``: Adam at ``model.lr`` throughout, the paper's setting and ``make train``'s.
- ``cosine``: Adam from ``model.lr`` annealed to 0 along a half cosine over every optimizer step of
  the run (``trainer.max_epochs`` x batches, or ``max_steps``), one step at a time. The last epochs
  then move the weights little, and a run ends where its training loss settled rather than at one
  noisy iterate. The reproduction trains every run this way (sweeps/reproduce_*.yaml).

Checkpoints keep the schedule's place, so a resumed run continues it; a resume that would change
its length (another ``trainer.max_epochs``) is refused before any step.
"""

from collections.abc import Iterable

import torch
from lightning import LightningModule, Trainer

from consistency_vae.errors import ConfigError

SCHEDULES = ("constant", "cosine")


def adam(params: Iterable[torch.nn.Parameter], lr: float, schedule: str, trainer: Trainer,
         capturable: bool = False) -> dict:
    """What ``configure_optimizers`` returns: Adam, with the schedule over the run's optimizer
    steps (``trainer.estimated_stepping_batches``, read for ``cosine`` only). ``capturable``
    (CUDA graphs, packed/graph.py): Adam's step count and learning rate live on the device."""
    if capturable:
        params = list(params)
        optimizer = torch.optim.Adam(params, lr=torch.tensor(lr, device=params[0].device), capturable=True)
    else:
        optimizer = torch.optim.Adam(params, lr=lr)
    if schedule == "constant":
        return {"optimizer": optimizer}
    steps = trainer.estimated_stepping_batches
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def check_resumed_length(module: LightningModule) -> None:
    """At train start, after a resume restored the schedule: its length must be this run's."""
    if module.hparams.lr_schedule != "cosine":
        return
    planned, steps = module.lr_schedulers().T_max, module.trainer.estimated_stepping_batches
    if planned != steps:
        raise ConfigError(f"the checkpoint's cosine learning-rate schedule spans {planned} optimizer steps, "
                          f"this run {steps}: resume with the trainer.max_epochs it started with, or start "
                          "a new run")
