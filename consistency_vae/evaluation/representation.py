"""Representation quality of the posterior means and of q(z|x) itself: the paper's third claim.

- ``MeansProbe``: the evaluation metric that fits a classifier (``knn_accuracy``, the linear
  probe) on the training images' posterior means and scores it on the test images'.
- ``knn_accuracy``: a k-nearest-neighbour classifier on mu(x), fit on the training images,
  scored on the test images (no training, no hyper-parameters beyond k: a probe of the latent
  geometry, where the linear probe of ``metrics.linear_probe_accuracy`` tests linear separability).
- ``MutualInformation``: I(x; z) under the encoder's joint q(x, z) = p_data(x) q(z|x), with the
  estimator of He et al. (2019, "Lagging inference networks", ``calc_mi``):

      I = E_x E_q(z|x) [log q(z|x)] - E_x E_q(z|x) [log q(z)],
      log q(z) ~ logsumexp_j log q(z|x_j) - log B     over the B images of a batch.

  The first term is the exact negative entropy of each Gaussian; the second uses one z per image.
  The aggregate posterior is estimated within each batch, so the value depends on B (it is at most
  log B): B is part of the result and is reported with it.
"""

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from consistency_vae import losses
from consistency_vae.errors import MetricUnavailable
from consistency_vae.evaluation.metrics import probe_accuracy
from consistency_vae.evaluation.standard_errors import binomial_standard_error, standard_error

KNN_NEIGHBOURS = 5  # k of the k-NN probe: a vote of 5 is the usual choice, and needs 5 training images


def knn_accuracy(train_features: Tensor, train_labels: Tensor, test_features: Tensor,
                 test_labels: Tensor, k: int = KNN_NEIGHBOURS) -> float:
    """Test accuracy of sklearn's k-nearest-neighbour vote on standardised features, (N, D) each."""
    from sklearn.neighbors import KNeighborsClassifier

    return probe_accuracy(KNeighborsClassifier(n_neighbors=k), train_features, train_labels,
                          test_features, test_labels)


def mutual_information_batch(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None
                             ) -> Tensor:
    """He et al.'s estimate of I(x; z) from one batch of posteriors, (B, D) each -> scalar (nats)."""
    batch, dim = mu.shape
    # E_q(z|x) log q(z|x) = -H[N(mu, var)] = -D/2 log(2 pi e) - 1/2 sum logvar, exactly
    neg_entropy = (-0.5 * dim * math.log(2 * math.pi) - 0.5 * (1 + logvar).sum(-1)).mean()
    z = losses.reparameterize(mu, logvar, generator)  # (B, D): one sample per image
    log_density = losses.gaussian_log_prob(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))  # (B, B)
    log_qz = torch.logsumexp(log_density, dim=1) - math.log(batch)  # (B,)
    return neg_entropy - log_qz.mean()


class MutualInformation(Metric):
    """Mean over batches of ``mutual_information_batch``; ``update(mu, logvar, generator)``.

    The estimate is a per-batch quantity, so the state is the sum of the batch estimates, of
    their squares and their number (reduced by sum across processes), plus the batch size, which
    must not change: compare runs only at the same B (``batch_size``). ``compute`` returns
    ``{"mutual_information": mean, "mutual_information_se": s / sqrt(batches)}``, with s the
    sample std of the batch estimates (NaN for one batch).
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("batches", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.batch_size: int | None = None

    def update(self, mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> None:
        if self.batch_size is None:
            self.batch_size = len(mu)
        elif len(mu) != self.batch_size:
            raise ValueError(f"MutualInformation: every batch must hold {self.batch_size} images (the "
                             f"estimate depends on B), got {len(mu)}: drop the last, smaller batch")
        estimate = mutual_information_batch(mu.detach(), logvar.detach(), generator).double()
        self.total += estimate
        self.total_sq += estimate.pow(2)
        self.batches += 1

    def compute(self) -> dict[str, Tensor]:
        return {"mutual_information": self.total / self.batches,
                "mutual_information_se": standard_error(self.total, self.total_sq, self.batches)}


class MeansProbe(Metric):
    """A classifier fit on the training images' posterior means, scored on the test images'.
    Unavailable with fewer than two classes, or fewer than ``min_train`` training images."""

    def __init__(self, key: str, score: Callable[..., float], min_train: int = 2):
        super().__init__()
        self.key, self.score, self.min_train = key, score, min_train
        for state in ("train_mu", "train_y", "test_mu", "test_y"):
            self.add_state(state, default=[], dist_reduce_fx="cat")

    def update(self, batch) -> None:  # an eval_metrics.EvalBatch
        getattr(self, f"{batch.split}_mu").append(batch.encode()[0].detach().cpu())
        getattr(self, f"{batch.split}_y").append(batch.labels.cpu())

    def compute(self) -> dict[str, float]:
        train_y, test_y = dim_zero_cat(self.train_y), dim_zero_cat(self.test_y)
        classes = train_y.unique().tolist()
        if len(classes) < 2:
            held = f"all of class {classes[0]}" if classes else "none"
            raise MetricUnavailable(f"the training images are {held}: a classifier needs two classes "
                                    "or more")
        if len(train_y) < self.min_train:
            raise MetricUnavailable(f"{len(train_y)} training images, fewer than the "
                                    f"{self.min_train} it needs")
        accuracy = self.score(dim_zero_cat(self.train_mu), train_y, dim_zero_cat(self.test_mu), test_y)
        return {self.key: accuracy, f"{self.key}_se": binomial_standard_error(accuracy, len(test_y))}
