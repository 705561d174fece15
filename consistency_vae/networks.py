"""Encoders and decoders: plain ``nn.Module``s, chosen in YAML with ``class_path``.

Each class takes ``latent_dim`` as its first argument; the LightningModule passes it, so the YAML
only names the class and its own sizes. Images are (B, 1, 28, 28) in [0, 1].

An encoder returns ``(mu, logvar)``, each (B, D). The log-variance is bounded smoothly to
``[-LOGVAR_BOUND, LOGVAR_BOUND]`` so that ``exp(logvar)`` can never overflow or underflow, even
for inputs far from the data (a decoder's reconstruction early in training, say).
A decoder returns Bernoulli logits, (B, 1, 28, 28).
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

IMAGE_SHAPE = (1, 28, 28)
LOGVAR_BOUND = 10.0  # variances in [4.5e-5, 2.2e4]: far wider than any trained posterior needs


def bound_logvar(raw: Tensor) -> Tensor:
    """Smooth bound: identity near 0, saturating at +-LOGVAR_BOUND."""
    return LOGVAR_BOUND * torch.tanh(raw / LOGVAR_BOUND)


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """784 -> hidden_dims -> 2D, the paper-style fully connected encoder (784-400-D by default)."""

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int] = (400,)):
        super().__init__()
        self.net = mlp([IMAGE_SHAPE[-1] * IMAGE_SHAPE[-2], *hidden_dims, 2 * latent_dim])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, raw = self.net(x.flatten(1)).chunk(2, dim=-1)  # (B, D) each
        return mu, bound_logvar(raw)


class MLPDecoder(nn.Module):
    """D -> reversed hidden_dims -> 784 Bernoulli logits."""

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int] = (400,)):
        super().__init__()
        self.net = mlp([latent_dim, *reversed(hidden_dims), IMAGE_SHAPE[-1] * IMAGE_SHAPE[-2]])

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *IMAGE_SHAPE)  # (B, 1, 28, 28)


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions (28 -> 14 -> 7), then a fully connected layer."""

    def __init__(self, latent_dim: int, channels: int = 32, hidden_dim: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 4, stride=2, padding=1),  # (B, C, 14, 14)
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1),  # (B, 2C, 7, 7)
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * channels * 7 * 7, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 2 * latent_dim),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, raw = self.net(x).chunk(2, dim=-1)
        return mu, bound_logvar(raw)


class ConvDecoder(nn.Module):
    """Mirror of ConvEncoder with transposed convolutions (7 -> 14 -> 28)."""

    def __init__(self, latent_dim: int, channels: int = 32, hidden_dim: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 2 * channels * 7 * 7),
            nn.ReLU(),
            nn.Unflatten(1, (2 * channels, 7, 7)),
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),  # (B, C, 14, 14)
            nn.ReLU(),
            nn.ConvTranspose2d(channels, 1, 4, stride=2, padding=1),  # (B, 1, 28, 28)
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


# Models built in Python (not through the CLI) keep the network classes in their hyperparameters;
# let torch's weights-only unpickler accept them, so load_from_checkpoint works without opt-outs.
torch.serialization.add_safe_globals([MLPEncoder, MLPDecoder, ConvEncoder, ConvDecoder])
