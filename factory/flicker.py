"""How much a style flickers on video, in one number per clip. No Ray, no torch.

A network that stylises each frame on its own can turn a small change between frames (a camera's
noise, a slow pan) into a large change of the output: paint strokes that crawl and boil. The figure is
the issue's: the mean change of the stylised frames between consecutive frames over the mean change of
the input frames (mean absolute difference of 0..255 pixels). 1.0: the output changes as much as the
input; a per-frame network is well above it; the stability loss (loss.stability_weight) lowers it.

The clips are made from a still photo, so every model is measured on the same frames:
- pan_clip: a window sliding across the photo a pixel a frame (a slow pan);
- noisy_clip: the same window every frame with fresh Gaussian noise (a static camera's sensor noise).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

# A clip's frames: (T, H, W, 3) uint8. A stylist: (B, H, W, 3) uint8 -> the same, stylised.
Stylist = Callable[[np.ndarray], np.ndarray]

PAN_PIXELS_PER_FRAME = 1
CAMERA_NOISE_SD = 3.0  # 0..255 units: a decent camera's noise in a dim room, after compression


def _window(photo: Image.Image, side: int, extra_width: int) -> np.ndarray:
    """The photo scaled so a side x (side + extra_width) window fits its middle, as an (H, W, 3) uint8 array."""
    photo = photo.convert("RGB")
    scale = max(side / photo.height, (side + extra_width) / photo.width)
    photo = photo.resize((max(round(photo.width * scale), side + extra_width), max(round(photo.height * scale), side)),
                         Image.Resampling.BICUBIC)
    top, left = (photo.height - side) // 2, (photo.width - side - extra_width) // 2
    return np.asarray(photo)[top:top + side, left:left + side + extra_width]


def pan_clip(photo: Image.Image, side: int = 256, frames: int = 16) -> np.ndarray:
    """(frames, side, side, 3): a side x side window moving right across the photo a pixel a frame."""
    strip = _window(photo, side, (frames - 1) * PAN_PIXELS_PER_FRAME)
    return np.stack([strip[:, index * PAN_PIXELS_PER_FRAME:index * PAN_PIXELS_PER_FRAME + side] for index in range(frames)])


def noisy_clip(photo: Image.Image, side: int = 256, frames: int = 16, noise_sd: float = CAMERA_NOISE_SD, seed: int = 0) -> np.ndarray:
    """(frames, side, side, 3): the same window every frame, each with its own Gaussian noise, rounded to uint8 as a decoder gives it."""
    still = _window(photo, side, 0).astype(np.float32)
    noise = np.random.default_rng(seed).normal(0.0, noise_sd, size=(frames, *still.shape)).astype(np.float32)
    return np.clip(np.rint(still + noise), 0, 255).astype(np.uint8)


def mean_frame_change(frames: np.ndarray) -> float:
    """The mean absolute difference between consecutive frames, in 0..255 pixel units."""
    if len(frames) < 2:
        raise ValueError(f"a clip needs at least two frames to change between, got {len(frames)}")
    return float(np.abs(np.diff(frames.astype(np.float32), axis=0)).mean())


def flicker(stylise: Stylist, clip: np.ndarray, batch_size: int = 8) -> float:
    """The stylised clip's mean frame change over the clip's own: how much the style amplifies change."""
    stylised = np.concatenate([stylise(clip[start:start + batch_size]) for start in range(0, len(clip), batch_size)])
    return mean_frame_change(stylised) / max(mean_frame_change(clip), 1e-9)
