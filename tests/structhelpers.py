"""Helpers shared by the structured-pruning tests."""
import numpy as np

from prunekit import nn


def randomise_bn(model, seed=1):
    """Non-trivial running statistics and affine parameters, so a wrong BatchNorm cut shows."""
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean[:] = rng.normal(size=m.num_features)
            m.running_var[:] = rng.uniform(0.5, 2.0, m.num_features)
            m.weight.data[:] = rng.normal(size=m.num_features)
            m.bias.data[:] = rng.normal(size=m.num_features)
    return model
