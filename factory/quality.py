"""Two figures that say whether a stylised image shows its style and keeps its photo. No Ray, no torch.

- colour_shift: how far the stylised image's colours moved from the photo's toward the style image's,
  as 1 - d(stylised, style) / d(photo, style), where d is the Frechet distance between the images'
  RGB distributions (mean and covariance, as FID does for network features). 0: the colours did not
  move; 1: they match the painting's; below 0: they moved away.
- structure_kept: the correlation of the luminance-gradient magnitudes of the stylised image and the
  photo, at the photo's size. 1: every edge where the photo has one; near 0: the photo is gone.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Pixels sampled for the colour statistics: plenty for a 3x3 covariance, and cheap on any image size.
_COLOUR_SAMPLE_SIDE = 256


def _rgb_pixels(image: Image.Image) -> np.ndarray:
    """(N, 3) float64 RGB values in 0..1 of the image shrunk to at most 256 px a side."""
    image = image.convert("RGB")
    image.thumbnail((_COLOUR_SAMPLE_SIDE, _COLOUR_SAMPLE_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float64).reshape(-1, 3) / 255.0


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def _trace_of_product_sqrt(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """Tr((A B)^1/2) for covariance matrices, as Tr((A^1/2 B A^1/2)^1/2): symmetric, so stable even
    when one image has a single colour direction (a grey photo's covariance is singular)."""
    root_a = _symmetric_sqrt(cov_a)
    values = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    return float(np.sum(np.sqrt(np.clip(values, 0.0, None))))


def colour_distance(a: Image.Image, b: Image.Image) -> float:
    """Frechet distance between the RGB distributions of two images (0..1 pixel units)."""
    pixels_a, pixels_b = _rgb_pixels(a), _rgb_pixels(b)
    mean_a, mean_b = pixels_a.mean(axis=0), pixels_b.mean(axis=0)
    cov_a, cov_b = np.cov(pixels_a, rowvar=False), np.cov(pixels_b, rowvar=False)
    trace = np.trace(cov_a) + np.trace(cov_b) - 2.0 * _trace_of_product_sqrt(cov_a, cov_b)
    squared = float(np.sum((mean_a - mean_b) ** 2) + max(trace, 0.0))
    return squared**0.5


def colour_shift(stylised: Image.Image, photo: Image.Image, style: Image.Image) -> float:
    """1 - d(stylised, style) / d(photo, style): the fraction of the way to the painting's colours."""
    photo_to_style = colour_distance(photo, style)
    if photo_to_style < 1e-6:  # the photo already has the painting's colours: nothing to move
        return 1.0
    return 1.0 - colour_distance(stylised, style) / photo_to_style


def _gradient_magnitude(image: Image.Image) -> np.ndarray:
    luminance = np.asarray(image.convert("L"), dtype=np.float64)
    vertical = np.diff(luminance, axis=0)[:, :-1]
    horizontal = np.diff(luminance, axis=1)[:-1, :]
    return np.hypot(vertical, horizontal)


def structure_kept(stylised: Image.Image, photo: Image.Image) -> float:
    """Correlation of luminance-gradient magnitudes of the stylised image and the photo."""
    if stylised.size != photo.size:
        stylised = stylised.resize(photo.size, Image.Resampling.BILINEAR)
    a, b = _gradient_magnitude(stylised).ravel(), _gradient_magnitude(photo).ravel()
    if a.std() < 1e-9 or b.std() < 1e-9:  # a flat image has no edges to correlate
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def figures(stylised: Image.Image, photo: Image.Image, style: Image.Image) -> dict[str, float]:
    """{'colour_shift': ..., 'structure_kept': ...}, rounded for metadata and tables."""
    return {
        "colour_shift": round(colour_shift(stylised, photo, style), 4),
        "structure_kept": round(structure_kept(stylised, photo), 4),
    }
