"""An own model: a small CNN with a strict constructor (no **kwargs, no timm keys).

The framework gives it ``num_classes`` and ``in_chans`` (the runtime inputs its signature
takes); ``width`` comes from conf/model/smallcnn.yaml.
"""
import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two 3x3 convolutions, global average pooling and a linear head.

    Args:
        num_classes: outputs (here: the 3 attributes of a digit).
        in_chans: input channels ``C``.
        width: channels of the convolutions.

    Shapes: ``(B, C, H, W)`` -> logits ``(B, num_classes)``.
    """

    def __init__(self, num_classes: int, in_chans: int, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
