"""What a request may ask of a stylised image beyond the network: strength and colour preservation."""

from __future__ import annotations

import numpy as np
from PIL import Image


def preserve_colors(stylised: Image.Image, original: Image.Image) -> Image.Image:
    """Keep the photo's colours, take the style's texture: the stylised luminance with the original's
    chrominance (the luminance-only transfer of Gatys et al., "Preserving Color in Neural Artistic
    Style Transfer", 2016)."""
    luminance, _, _ = stylised.convert("YCbCr").split()
    _, blue, red = original.resize(stylised.size).convert("YCbCr").split()
    return Image.merge("YCbCr", (luminance, blue, red)).convert("RGB")


def blend(stylised: Image.Image, original: Image.Image, strength: float) -> Image.Image:
    """strength 1 is the stylised image, 0 the original, in between a pixel-wise mix."""
    if strength >= 1.0:
        return stylised
    mixed = strength * np.asarray(stylised, np.float32) + (1 - strength) * np.asarray(original.resize(stylised.size), np.float32)
    return Image.fromarray(np.clip(mixed.round(), 0, 255).astype(np.uint8), "RGB")


def finish(stylised: Image.Image, original: Image.Image, strength: float, keep_colors: bool) -> Image.Image:
    if keep_colors:
        stylised = preserve_colors(stylised, original)
    return blend(stylised, original, strength)
