"""Encoders and decoders: plain ``nn.Module``s, chosen in YAML with ``class_path``.

Each class takes ``latent_dim`` and ``image_shape`` (C, H, W) as its first two arguments; the
LightningModule passes them (the image shape comes from the data, through the CLI's
``link_arguments``), so the YAML only names the class and its own sizes. Images are (B, C, H, W)
in [0, 1], grey (C = 1) or colour (C = 3); (1, 28, 28) is MNIST's.

An encoder returns ``(mu, logvar)``, each (B, D). The log-variance is bounded smoothly to
``[-LOGVAR_BOUND, LOGVAR_BOUND]`` so that ``exp(logvar)`` can never overflow or underflow, even
for inputs far from the data (a decoder's reconstruction early in training, say).
A decoder returns Bernoulli logits, (B, C, H, W).
"""

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from consistency_vae.errors import ConfigError

ImageShape = tuple[int, int, int]  # (C, H, W)
MNIST_SHAPE: ImageShape = (1, 28, 28)  # the default, as in every checkpoint written before the link
LOGVAR_BOUND = 10.0  # variances in [4.5e-5, 2.2e4]: far wider than any trained posterior needs
# Hidden-unit nonlinearity of the MLPs. ReLU is the default (the paper's 784-400-D MLP); tanh is
# there for literature comparisons such as Burda et al.'s 784-200-200-50 (configs/binarized_mnist.yaml).
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}
Activation = Literal["relu", "tanh"]


def bound_logvar(raw: Tensor) -> Tensor:
    """Smooth bound: identity near 0, saturating at +-LOGVAR_BOUND."""
    return LOGVAR_BOUND * torch.tanh(raw / LOGVAR_BOUND)


def mlp(sizes: Sequence[int], activation: Activation = "relu") -> nn.Sequential:
    """Linear layers with ``activation`` between them (none after the last)."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}: set "
                          f"init_args.activation of MLPEncoder/MLPDecoder to one of them")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """C*H*W -> hidden_dims -> 2D, the paper-style fully connected encoder (784-400-D on MNIST)."""

    def __init__(self, latent_dim: int, image_shape: ImageShape = MNIST_SHAPE,
                 hidden_dims: Sequence[int] = (400,), activation: Activation = "relu"):
        super().__init__()
        self.net = mlp([math.prod(image_shape), *hidden_dims, 2 * latent_dim], activation)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, raw = self.net(x.flatten(1)).chunk(2, dim=-1)  # (B, D) each
        return mu, bound_logvar(raw)


class MLPDecoder(nn.Module):
    """D -> reversed hidden_dims -> C*H*W Bernoulli logits."""

    def __init__(self, latent_dim: int, image_shape: ImageShape = MNIST_SHAPE,
                 hidden_dims: Sequence[int] = (400,), activation: Activation = "relu"):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.net = mlp([latent_dim, *reversed(hidden_dims), math.prod(image_shape)], activation)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.image_shape)  # (B, C, H, W)


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions (H -> H//2 -> H//4: 28 -> 14 -> 7), then a fully connected layer."""

    def __init__(self, latent_dim: int, image_shape: ImageShape = MNIST_SHAPE, channels: int = 32,
                 hidden_dim: int = 256):
        super().__init__()
        _check_conv_shape(image_shape)
        c, h, w = image_shape
        self.net = nn.Sequential(
            nn.Conv2d(c, channels, 4, stride=2, padding=1),  # (B, ch, H//2, W//2)
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1),  # (B, 2ch, H//4, W//4)
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * channels * (h // 2 // 2) * (w // 2 // 2), hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 2 * latent_dim),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, raw = self.net(x).chunk(2, dim=-1)
        return mu, bound_logvar(raw)


class ConvDecoder(nn.Module):
    """Mirror of ConvEncoder with transposed convolutions (7 -> 14 -> 28), cropped to (H, W) when
    H or W is not a multiple of 4 (ceil(H/4) -> 4 * ceil(H/4) >= H)."""

    def __init__(self, latent_dim: int, image_shape: ImageShape = MNIST_SHAPE, channels: int = 32,
                 hidden_dim: int = 256):
        super().__init__()
        _check_conv_shape(image_shape)
        c, self.height, self.width = image_shape
        h4, w4 = -(-self.height // 4), -(-self.width // 4)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 2 * channels * h4 * w4),
            nn.ReLU(),
            nn.Unflatten(1, (2 * channels, h4, w4)),
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),  # (B, ch, 2h4, 2w4)
            nn.ReLU(),
            nn.ConvTranspose2d(channels, c, 4, stride=2, padding=1),  # (B, C, 4h4, 4w4)
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)[..., :self.height, :self.width]  # (B, C, H, W)


def _check_conv_shape(image_shape: ImageShape) -> None:
    if len(image_shape) != 3 or min(image_shape[1:]) < 4:
        raise ConfigError(f"the convolutional networks need images (C, H, W) of at least 4 x 4 pixels "
                          f"(two stride-2 convolutions), got {tuple(image_shape)}: use MLPEncoder/MLPDecoder")


# Models built in Python (not through the CLI) keep the network classes in their hyperparameters;
# let torch's weights-only unpickler accept them, so load_from_checkpoint works without opt-outs.
torch.serialization.add_safe_globals([MLPEncoder, MLPDecoder, ConvEncoder, ConvDecoder])
