"""A VGG-style small CNN for 28x28 grey images (Fashion-MNIST), for filter pruning (Li et al. 2017).

VGG (Simonyan & Zisserman 2015) stacks 3x3 conv-BN-ReLU blocks and halves the
image with max-pooling between stages. Here: three stages of ``width``, ``2*width``,
``4*width`` channels (two convolutions in the first two stages, one in the third),
then a small classifier. Every convolution is followed by a BatchNorm, so it can be
pruned by L1 norm of its filters or by BatchNorm scale (network slimming).
"""
from __future__ import annotations

import numpy as np

from . import nn
from ._validate import check_int

__all__ = ["vgg_small"]


def _block(c_in, c_out, rng):
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False, rng=rng), nn.BatchNorm2d(c_out), nn.ReLU()]


def vgg_small(seed=None, width=16, num_classes=10, in_channels=1) -> nn.Sequential:
    """VGG-style CNN for (N, in_channels, 28, 28): [w, w] pool [2w, 2w] pool [4w] pool, then 2 Linear layers.

    The classifier is Linear(4w * 3 * 3, 4w), ReLU, Linear(4w, num_classes).

    With ``width=16``: 72,602 parameters and 5.6 M multiply-adds per image.
    """
    w = check_int("width", width, 1)
    check_int("num_classes", num_classes, 1)
    check_int("in_channels", in_channels, 1)
    rng = np.random.default_rng(seed)
    layers = [*_block(in_channels, w, rng), *_block(w, w, rng), nn.MaxPool2d(2),          # 28 -> 14
              *_block(w, 2 * w, rng), *_block(2 * w, 2 * w, rng), nn.MaxPool2d(2),        # 14 -> 7
              *_block(2 * w, 4 * w, rng), nn.MaxPool2d(2),                                # 7 -> 3
              nn.Flatten(), nn.Linear(4 * w * 9, 4 * w, rng=rng), nn.ReLU(),
              nn.Linear(4 * w, num_classes, rng=rng)]
    return nn.Sequential(*layers)
