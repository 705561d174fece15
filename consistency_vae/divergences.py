"""The consistency divergence that the model trains: ``model.divergence``, a class_path in YAML.

    model:
      divergence: consistency_vae.divergences.JeffreysKL   # or ReverseKL, Wasserstein2, your own

Each is a callable ``(mu_prime, logvar_prime, mu, logvar) -> (B,)`` between the re-encoding
q(z'|x') = N(mu_prime, exp(logvar_prime)) and the posterior q(z|x) = N(mu, exp(logvar)), diagonal
Gaussians, (B, D) each; the maths is in ``losses.py``. The default is the paper's
KL(q(z'|x') || q(z|x)) (``ForwardKL``). Whatever is trained, the model still measures and logs
KL(q(z'|x') || q(z|x)) as ``kl_consistency``, the quantity under study.

A new divergence is one subclass of ``ConsistencyDivergence`` in any importable module, named by
its class_path (docs/extending.md).
"""

import torch
from torch import Tensor

from consistency_vae import losses


class ConsistencyDivergence:
    """Base class: ``__call__(mu_prime, logvar_prime, mu, logvar)`` -> one value per example, (B,)."""

    def __call__(self, mu_prime: Tensor, logvar_prime: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ForwardKL(ConsistencyDivergence):
    """KL(q(z'|x') || q(z|x)), the paper's term; the model reuses its kl_consistency (no extra work)."""

    def __call__(self, mu_prime, logvar_prime, mu, logvar):
        return losses.consistency_kl(mu_prime, logvar_prime, mu, logvar)


class ReverseKL(ConsistencyDivergence):
    """KL(q(z|x) || q(z'|x')): the arguments of the paper's KL swapped."""

    def __call__(self, mu_prime, logvar_prime, mu, logvar):
        return losses.reverse_consistency_kl(mu_prime, logvar_prime, mu, logvar)


class JeffreysKL(ConsistencyDivergence):
    """The symmetric (Jeffreys) divergence KL(q'||q) + KL(q||q')."""

    def __call__(self, mu_prime, logvar_prime, mu, logvar):
        return losses.jeffreys_divergence(mu_prime, logvar_prime, mu, logvar)


class Wasserstein2(ConsistencyDivergence):
    """The squared 2-Wasserstein distance W2^2(q(z'|x'), q(z|x)), in squared latent units (not nats)."""

    def __call__(self, mu_prime, logvar_prime, mu, logvar):
        return losses.wasserstein2_squared(mu_prime, logvar_prime, mu, logvar)


# Models built in Python keep the instance in their hyperparameters: let weights-only loading accept it.
torch.serialization.add_safe_globals([ForwardKL, ReverseKL, JeffreysKL, Wasserstein2])
