"""The frozen VGG-19 loss network: images in, named ReLU features out."""

from __future__ import annotations

import torch
from torch import nn

from factory.vgg_weights import CONV_NAMES, VGGWeights


def relu_index(layer: str) -> int:
    """'relu3_1' -> index of conv3_1 among VGG-19's 16 convolutions."""
    return CONV_NAMES.index(layer.replace("relu", "conv"))


class LossNetwork(nn.Module):
    """VGG-19 up to the deepest requested layer, with the preprocessing its weights were trained for.

    forward((B, 3, H, W) RGB in 0..255) -> {layer name: (B, C, h, w) features}.
    """

    def __init__(self, weights: VGGWeights, layers: list[str] | tuple[str, ...]):
        super().__init__()
        self.layers = tuple(dict.fromkeys(layers))
        depth = max(relu_index(layer) for layer in self.layers) + 1
        self.convs = nn.ModuleList()
        for weight, bias in weights.convs[:depth]:
            conv = nn.Conv2d(weight.shape[1], weight.shape[0], 3, padding=1)
            conv.weight.data.copy_(weight)
            conv.bias.data.copy_(bias)
            self.convs.append(conv)
        self.register_buffer("input_scale", torch.tensor(weights.input_scale), persistent=False)
        self.register_buffer("mean", torch.tensor(weights.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(weights.std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (images / self.input_scale - self.mean) / self.std  # never in place: callers reuse images
        features = {}
        for index, conv in enumerate(self.convs):
            name = CONV_NAMES[index]
            if index > 0 and name.endswith("_1"):  # each block after the first starts after a max pool
                x = nn.functional.max_pool2d(x, 2)
            x = torch.relu(conv(x))
            layer = name.replace("conv", "relu")
            if layer in self.layers:
                features[layer] = x
        return features
