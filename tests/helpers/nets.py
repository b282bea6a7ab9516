"""A network of one's own for the config tests (``model=custom model._target_=tests.helpers.nets.StrictCNN``)."""
from __future__ import annotations

import torch
from torch import nn


class StrictCNN(nn.Module):
    """A convolution, global average pooling and a linear head; a strict constructor (no
    ``**kwargs``, no ``img_size``), as a user writes one.

    Args:
        num_classes: outputs ``K``.
        in_chans: input channels ``C``.
        width: channels of the convolution.

    Shapes: ``(B, C, H, W)`` -> ``(B, K)``.
    """

    def __init__(self, num_classes: int, in_chans: int, width: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))
