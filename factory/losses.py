"""Perceptual losses: content (feature) loss, style (Gram) loss and total variation.

Gram matrices are computed in float32 even under autocast: with C*H*W in the hundreds of thousands,
fp16 sums of products overflow (65504 max) and the style loss turns into inf/NaN.
"""

from __future__ import annotations

import torch


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C) Gram matrix normalised by C*H*W, always in float32."""
    batch, channels, height, width = features.shape
    with torch.autocast(device_type=features.device.type, enabled=False):
        flat = features.float().reshape(batch, channels, height * width)
        return torch.bmm(flat, flat.transpose(1, 2)) / (channels * height * width)


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of feature maps, (B, C, H, W) each."""
    return torch.mean((features.float() - target.float()) ** 2)


def style_loss(grams: list[torch.Tensor], target_grams: list[torch.Tensor]) -> torch.Tensor:
    """Sum over layers of the mean squared Gram difference; targets are (1, C, C) or (B, C, C)."""
    return sum(torch.mean((gram - target) ** 2) for gram, target in zip(grams, target_grams, strict=True))


def total_variation_loss(images: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between vertical and horizontal neighbours of (B, C, H, W) images."""
    images = images.float()
    vertical = torch.mean((images[..., 1:, :] - images[..., :-1, :]) ** 2)
    horizontal = torch.mean((images[..., :, 1:] - images[..., :, :-1]) ** 2)
    return vertical + horizontal
