"""The MLPs' ``activation`` option: tanh really is tanh, and the default is the ReLU MLP it always was."""

import pytest
import torch
import yaml
from torch import nn

from consistency_vae.errors import ConfigError
from consistency_vae.evaluation.metrics import _bernoulli_log_likelihood, iwae_log_likelihood
from consistency_vae.model import ConsistencyVAE
from consistency_vae.networks import MLPDecoder, MLPEncoder, bound_logvar
from tests.conftest import ROOT

SHAPE = (1, 4, 4)  # 16 pixels: small enough to check by hand
REFERENCE = {"relu": torch.relu, "tanh": torch.tanh}


def by_hand(net: nn.Sequential, x: torch.Tensor, act) -> torch.Tensor:
    """The MLP written out: act(W x + b) for every Linear but the last, which stays linear."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for layer in linears[:-1]:
        x = act(x @ layer.weight.T + layer.bias)
    return x @ linears[-1].weight.T + linears[-1].bias


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_mlps_compute_the_named_activation(activation):
    torch.manual_seed(0)
    encoder = MLPEncoder(3, SHAPE, hidden_dims=[5, 6], activation=activation)
    decoder = MLPDecoder(3, SHAPE, hidden_dims=[5, 6], activation=activation)
    x, z = torch.rand(7, *SHAPE), torch.randn(7, 3)
    mu, logvar = encoder(x)
    raw = by_hand(encoder.net, x.flatten(1), REFERENCE[activation])
    torch.testing.assert_close(mu, raw[:, :3])
    torch.testing.assert_close(logvar, bound_logvar(raw[:, 3:]))
    torch.testing.assert_close(decoder(z).flatten(1), by_hand(decoder.net, z, REFERENCE[activation]))
    other = REFERENCE["relu" if activation == "tanh" else "tanh"]  # the check can tell them apart
    assert not torch.allclose(mu, by_hand(encoder.net, x.flatten(1), other)[:, :3])


def test_default_is_the_relu_mlp_of_before_with_the_same_seeded_weights():
    """Same modules, parameter names and seeded values as the pre-option code built, so the
    default runs and every existing checkpoint are unchanged."""
    torch.manual_seed(0)
    default = MLPEncoder(2)
    torch.manual_seed(0)
    before = nn.Sequential(nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 4))  # the old mlp()
    assert [type(m) for m in default.net] == [nn.Linear, nn.ReLU, nn.Linear]
    assert default.net.state_dict().keys() == before.state_dict().keys()
    for name, value in before.state_dict().items():
        assert torch.equal(default.net.state_dict()[name], value), name
    x = torch.rand(5, 1, 28, 28)
    torch.testing.assert_close(default(x)[0], before(x.flatten(1))[:, :2], rtol=0, atol=0)


def test_an_unknown_activation_names_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"\['relu', 'tanh'\], got 'gelu'"):
        MLPDecoder(2, activation="gelu")


def test_binarized_mnist_config_is_burdas_784_200_200_50_tanh_vae():
    config = yaml.safe_load((ROOT / "configs/binarized_mnist.yaml").read_text())
    model = config["model"]
    assert model["alpha"] == 0.0 and config["data"]["binarize"] == "dynamic"
    encoder = MLPEncoder(model["latent_dim"], **model["encoder"]["init_args"])
    decoder = MLPDecoder(model["latent_dim"], **model["decoder"]["init_args"])
    sizes = [(m.in_features, m.out_features) for m in encoder.net if isinstance(m, nn.Linear)]
    assert sizes == [(784, 200), (200, 200), (200, 100)]  # 100 = mean and log-variance of 50
    sizes = [(m.in_features, m.out_features) for m in decoder.net if isinstance(m, nn.Linear)]
    assert sizes == [(50, 200), (200, 200), (200, 784)]
    for net in (encoder.net, decoder.net):
        assert sum(isinstance(m, nn.Tanh) for m in net) == 2 and not any(isinstance(m, nn.ReLU) for m in net)


def test_iwae_of_a_one_hidden_layer_tanh_decoder_is_the_dense_bound():
    """The IWAE shortcut for one-hidden-layer ReLU decoders must not be taken for tanh."""
    torch.manual_seed(0)
    model = ConsistencyVAE(encoder=lambda d, s: MLPEncoder(d, s, (32,), "tanh"),
                           decoder=lambda d, s: MLPDecoder(d, s, (32,), "tanh"), latent_dim=2).eval()
    x = torch.bernoulli(torch.rand(3, 1, 28, 28))
    k = 64  # the shortcut's threshold (metrics.MIN_K_SHORTCUT)
    with torch.no_grad():
        got = iwae_log_likelihood(model, x, k, torch.Generator().manual_seed(1))
        mu, logvar = model.encode(x)
        eps = torch.randn((k, 3, 2), generator=torch.Generator().manual_seed(1))
        z = mu + (0.5 * logvar).exp() * eps  # (K, B, D): the same draws as the function's
        log_px = _bernoulli_log_likelihood(model.decoder(z.reshape(-1, 2)).reshape(k, 3, -1), x.flatten(1))
        normal = torch.distributions.Normal
        log_w = (log_px + normal(0.0, 1.0).log_prob(z).sum(-1)
                 - normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1))
        expected = torch.logsumexp(log_w, 0) - torch.log(torch.tensor(float(k)))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
