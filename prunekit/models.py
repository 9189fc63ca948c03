"""Ready-made models used throughout the course.

All take ``seed=`` for reproducible initialisation: the same seed gives the same weights.
"""
from __future__ import annotations

import numpy as np

from . import nn
from ._validate import check_option, fail

__all__ = ["mlp", "lenet_300_100", "lenet5", "resnet_small", "vgg_small", "ResidualBlock", "GlobalAvgPool2d"]

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def mlp(sizes, activation="relu", *, seed=None) -> nn.Sequential:
    """A multi-layer perceptron: Linear(sizes[0], sizes[1]), activation, ..., Linear(sizes[-2], sizes[-1]).

    >>> mlp([64, 128, 10])   # 64 inputs, one hidden layer of 128, 10 outputs
    """
    sizes = list(sizes) if not isinstance(sizes, (str, bytes)) else sizes
    if not isinstance(sizes, list) or len(sizes) < 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in sizes):
        fail("sizes", "a list of at least two positive ints (input, hidden..., output)", sizes)
    act = _ACTIVATIONS[check_option("activation", activation, tuple(_ACTIVATIONS))]
    rng = np.random.default_rng(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(int(a), int(b), rng=rng))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def lenet_300_100(*, seed=None) -> nn.Sequential:
    """LeNet-300-100 (LeCun et al. 1998): 784 -> 300 -> 100 -> 10 with ReLU; takes flattened 28x28 images."""
    return mlp([784, 300, 100, 10], seed=seed)


def lenet5(*, seed=None) -> nn.Sequential:
    """LeNet-5 for 1x28x28 images: two 5x5 conv + max-pool stages (6, 16 channels), then 400-120-84-10."""
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120, rng=rng), nn.ReLU(),
        nn.Linear(120, 84, rng=rng), nn.ReLU(),
        nn.Linear(84, 10, rng=rng),
    )


class GlobalAvgPool2d(nn.Module):
    """Mean over the spatial axes: (N, C, H, W) -> (N, C)."""

    def forward(self, x):
        return x.mean(axis=(2, 3))


class ResidualBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut, then ReLU (He et al. 2016).

    The shortcut is the identity, or a 1x1 conv + BN when the shape changes. The
    output channels of ``bn2`` and of the shortcut are *coupled*: they are added,
    so a structured pruner must remove the same channels from both.
    """

    def __init__(self, in_channels, out_channels, stride=1, rng=None):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False, rng=rng)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False, rng=rng)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False, rng=rng),
                                          nn.BatchNorm2d(out_channels))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        h = self.bn1(self.conv1(x)).relu()
        h = self.bn2(self.conv2(h))
        return (h + self.shortcut(x)).relu()


def resnet_small(channels=(16, 32, 64), num_classes=10, *, seed=None) -> nn.Sequential:
    """A small residual CNN for 1x28x28 inputs: stem, one residual block per stage
    (stride 2 from the second stage), global average pooling, linear classifier."""
    rng = np.random.default_rng(seed)
    c0 = channels[0]
    layers = [nn.Conv2d(1, c0, 3, padding=1, bias=False, rng=rng), nn.BatchNorm2d(c0), nn.ReLU()]
    prev = c0
    for i, c in enumerate(channels):
        layers.append(ResidualBlock(prev, c, stride=1 if i == 0 else 2, rng=rng))
        prev = c
    layers += [GlobalAvgPool2d(), nn.Linear(prev, num_classes, rng=rng)]
    return nn.Sequential(*layers)


from .models_vgg import vgg_small  # noqa: E402  (its own file; it builds on nn only)
