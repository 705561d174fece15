"""Where the consistency gradient goes: into the encoder always, into the decoder (through x') only
with ``consistency_grad_through_decoder``, and nowhere in the plain VAE, which builds no graph for
KL(z'||z) at all (it is measured, not trained)."""

from functools import partial

import pytest
import torch

from consistency_vae.model import ConsistencyVAE
from consistency_vae.networks import MLPDecoder, MLPEncoder

X = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def small_model(**kwargs) -> ConsistencyVAE:
    torch.manual_seed(0)  # the same weights for every setting
    return ConsistencyVAE(encoder=partial(MLPEncoder, hidden_dims=[32]),
                          decoder=partial(MLPDecoder, hidden_dims=[32]), latent_dim=2, **kwargs)


def grads(model: ConsistencyVAE, term: str) -> dict[str, torch.Tensor | None]:
    """d mean(term) / d parameter for every parameter (None: the term does not depend on it)."""
    out = model(X, torch.Generator().manual_seed(1))
    params = dict(model.named_parameters())
    values = torch.autograd.grad(out[term].mean(), list(params.values()), allow_unused=True)
    return dict(zip(params, values, strict=True))


def nonzero(tensors) -> bool:
    return any(g is not None and g.abs().sum() > 0 for g in tensors)


@pytest.mark.parametrize("through_decoder", [True, False])
def test_the_decoder_gets_the_consistency_gradient_only_when_asked(through_decoder):
    model = small_model(alpha=1.0, consistency_grad_through_decoder=through_decoder)
    consistency = grads(model, "kl_consistency")
    decoder = [g for name, g in consistency.items() if name.startswith("decoder.")]
    encoder = [g for name, g in consistency.items() if name.startswith("encoder.")]
    assert nonzero(encoder)  # both q(z|x) and q(z'|x') move
    assert nonzero(decoder) is through_decoder
    if not through_decoder:  # no path at all, not merely a zero
        assert all(g is None for g in decoder)
    # So the decoder's gradient of the loss is that of -ELBO, plus alpha x the consistency's when asked
    loss, elbo = grads(model, "loss"), grads(model, "elbo")
    for name in (n for n in loss if n.startswith("decoder.")):
        expected = -elbo[name] + (consistency[name] if through_decoder else 0)
        # the same float32 sums regrouped: a few roundings of the largest terms
        torch.testing.assert_close(loss[name], expected, rtol=1e-5, atol=1e-5 * elbo[name].abs().max().item())


@pytest.mark.parametrize("kwargs, graph", [
    ({"alpha": 0.0}, False),  # the plain VAE
    ({"alpha": 0.5}, True),
    ({"alpha": 0.0, "alpha_mode": "constrained"}, True),  # alpha starts at 0 but may rise
])
def test_the_plain_vae_builds_no_consistency_graph(kwargs, graph):
    model = small_model(**kwargs).train()
    out = model(X, torch.Generator().manual_seed(1))
    for key in ("kl_consistency", "mu_prime", "logvar_prime"):
        assert out[key].requires_grad is graph and (out[key].grad_fn is not None) is graph
    assert out["loss"].requires_grad and out["elbo"].requires_grad  # the VAE itself still trains
    # and its loss gradient is exactly that of -ELBO
    if not graph:
        for name, g in grads(model, "loss").items():
            torch.testing.assert_close(g, -grads(model, "elbo")[name], rtol=0, atol=0)
