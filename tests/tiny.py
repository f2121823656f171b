"""A backbone small enough for model tests to train in seconds (same interface as
rcnn.backbones.Backbone: trunk, head, sizes, pixel statistics)."""

import itertools
from collections import OrderedDict
from types import SimpleNamespace

from torch import nn


def tiny_backbone(channels: int = 32, representation: int = 64) -> SimpleNamespace:
    widths = [3, 8, 16, 32, channels]
    layers = []
    for c_in, c_out in itertools.pairwise(widths):
        layers += [nn.Conv2d(c_in, c_out, 3, 2, 1), nn.GroupNorm(4, c_out), nn.ReLU()]
    head = nn.Sequential(  # named as the real backbones' heads (truncated SVD finds fc6, fc7)
        OrderedDict(
            flatten=nn.Flatten(),
            fc6=nn.Linear(channels * 49, representation),
            relu6=nn.ReLU(),
            fc7=nn.Linear(representation, representation),
            relu7=nn.ReLU(),
        )
    )
    return SimpleNamespace(
        trunk=nn.Sequential(*layers),
        head=head,
        out_channels=channels,
        representation_size=representation,
        pool_size=7,
        stride=16,
        pixel_mean=(0.5, 0.5, 0.5),
        pixel_std=(0.25, 0.25, 0.25),
    )
