"""The number a sweep over alpha optimises, ``val/constrained_elbo``: the rule of
``consistency_vae.alpha_choice`` (the best ELBO among models whose KL(z'||z) is at most a budget,
as one number) on each epoch's validation metrics, logged by a callback the sweep command adds."""

from lightning import Callback, LightningModule, Trainer

from consistency_vae import alpha_choice
from consistency_vae.alpha_choice import METRIC
from consistency_vae.errors import ConfigError


class ConstrainedELBO(Callback):
    """Log ``val/constrained_elbo`` from the epoch's ``val/elbo`` and ``val/kl_consistency``.

    It runs at the end of each training epoch, when Lightning has already run validation and
    reduced its metrics into ``trainer.callback_metrics`` (during ``on_validation_epoch_end``
    they still hold the previous epoch's values).

    Args:
        kl_target: the consistency budget in nats (``alpha_choice.KL_BUDGET``, 1 nat, by default).
        penalty: nats of ELBO charged per nat of KL above the budget (``alpha_choice.PENALTY``).
    """

    def __init__(self, kl_target: float = alpha_choice.KL_BUDGET,
                 penalty: float = alpha_choice.PENALTY):
        if kl_target <= 0 or penalty <= 0:
            raise ConfigError(f"ConstrainedELBO needs kl_target > 0 and penalty > 0, got "
                              f"kl_target={kl_target!r}, penalty={penalty!r}")
        self.kl_target = kl_target
        self.penalty = penalty

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = trainer.callback_metrics
        if "val/elbo" not in metrics or "val/kl_consistency" not in metrics:
            return  # no validation yet (limit_val_batches=0, check_val_every_n_epoch > 1)
        value = alpha_choice.constrained_elbo(metrics["val/elbo"], metrics["val/kl_consistency"],
                                              self.kl_target, self.penalty)
        pl_module.log(METRIC, value)
