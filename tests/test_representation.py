"""kNN accuracy and the I(x; z) estimator against independent computations and known answers."""

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from consistency_vae import losses
from consistency_vae.evaluation.representation import (
    MutualInformation,
    knn_accuracy,
    mutual_information_batch,
)


def test_knn_accuracy_matches_a_brute_force_vote():
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(300, 3, generator=g), torch.randn(100, 3, generator=g)
    rule = lambda x: (x[:, 0] + 0.5 * x[:, 1] > 0).long()  # noqa: E731 - two classes, a linear rule
    train_y, test_y = rule(train_x), rule(test_x)
    # standardise with the training statistics (population std, as sklearn), vote among 5 neighbours
    mean, std = train_x.mean(0), train_x.std(0, unbiased=False)
    dist = torch.cdist((test_x - mean) / std, (train_x - mean) / std)
    votes = train_y[dist.topk(5, largest=False).indices].float().mean(1)  # 5 is odd: no ties
    expected = int(((votes > 0.5).long() == test_y).sum()) / len(test_y)
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=5) == expected  # the same count over 100
    assert 0.8 < expected < 1.0  # a real test: neither trivial nor broken


def test_mutual_information_is_he_et_al_s_estimate():
    """The batch estimate equals E[log q(z|x)] - E[log q(z)] with q(z) the batch's mixture, written
    with torch.distributions, at the same z."""
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(64, 3, generator=g, dtype=torch.float64), \
        torch.randn(64, 3, generator=g, dtype=torch.float64) * 0.3
    estimate = mutual_information_batch(mu, logvar, torch.Generator().manual_seed(7))
    z = losses.reparameterize(mu, logvar, torch.Generator().manual_seed(7))  # the same draw
    posterior = Independent(Normal(mu, (0.5 * logvar).exp()), 1)
    aggregate = MixtureSameFamily(Categorical(logits=torch.zeros(64, dtype=torch.float64)), posterior)
    expected = (-posterior.entropy()).mean() - aggregate.log_prob(z.unsqueeze(1)).mean()
    assert float(estimate) == pytest.approx(float(expected), rel=1e-10)  # float64, same sums


@pytest.mark.parametrize(("clusters", "expected"), [(1, 0.0), (4, math.log(4))])
def test_mutual_information_known_answers(clusters, expected):
    """Posteriors that ignore x carry no information; four far-apart, narrow clusters carry log 4."""
    metric = MutualInformation()
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        label = torch.randint(clusters, (256,), generator=g)
        mu = 100.0 * torch.nn.functional.one_hot(label, 4).float()  # (B, 4): clusters far apart
        metric.update(mu, torch.full_like(mu, -4.0), g)
    # 20 batches of 256: the sampling error of the log-sum-exp is below 0.02 nats here
    assert float(metric.compute()["mutual_information"]) == pytest.approx(expected, abs=0.02)
    assert metric.batch_size == 256


def test_mutual_information_refuses_a_changed_batch_size():
    metric = MutualInformation()
    metric.update(torch.zeros(8, 2), torch.zeros(8, 2))
    with pytest.raises(ValueError, match="every batch must hold 8 images"):
        metric.update(torch.zeros(5, 2), torch.zeros(5, 2))
