"""Decoding untrusted image bytes into RGB, and the pixel conventions every part of the factory shares.

Convention: an image tensor is float RGB in 0..255, shaped (B, 3, H, W) or (3, H, W). The transform
network takes and returns that; each loss network source does its own preprocessing from it.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:  # torch only where tensors are made: the front door checks uploads without it (about 470 MB)
    import torch

ENCODE_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
# Pixel limit for images the config names (style images, the preview photo): generous, since the
# operator chose them, but still a bound against a decompression bomb in a shared bucket.
CONFIG_IMAGE_MAX_PIXELS = 200_000_000


class ImageRejected(ValueError):
    """The bytes are not a usable image; the message says why (empty, not an image, truncated, too big)."""


def decode_rgb(data: bytes, *, max_pixels: int, min_side: int | None = None, max_side: int | None = None) -> Image.Image:
    """Decode to an RGB image, whatever the mode (grayscale, CMYK, palette, alpha) or EXIF rotation.

    `min_side` (the shorter side stays at least this) and `max_side` (the longer side stays at least
    this) let a JPEG decode at a reduced scale (libjpeg's DCT scaling, 1/2 to 1/8) when the caller
    will shrink the image anyway: several times faster and smaller for phone photos. A 16-bit image is
    shrunk to max_side before its conversion to 8 bits.
    """
    if not data:
        raise ImageRejected("empty file")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:  # Pillow's own guard fired on the declared size
        raise ImageRejected(f"over the limit of {max_pixels} pixels ({error})") from None
    except UnidentifiedImageError:
        raise ImageRejected("not an image (unrecognised format)") from None
    except Exception as error:  # PIL raises many types for malformed headers
        raise ImageRejected(f"unreadable image header: {error}") from None
    width, height = image.size
    # Checked before decoding: a small file can declare a huge canvas (a decompression bomb).
    if width * height > max_pixels:
        raise ImageRejected(f"{width}x{height} is over the limit of {max_pixels} pixels")
    if width < 1 or height < 1:
        raise ImageRejected(f"degenerate size {width}x{height}")
    if image.format == "JPEG" and (min_side or max_side):
        scale = min(width, height) / min_side if min_side else max(width, height) / max_side
        if scale >= 2:  # draft picks the largest reduction that keeps at least the size asked for
            image.draft("RGB", (max(1, int(width / scale)), max(1, int(height / scale))))
    try:
        image.load()
        image = _exif_upright(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit (or 32-bit) grayscale: convert("RGB") clips
            image = _to_8_bit(fit_within(image, max_side) if max_side else image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            background = Image.new("RGB", image.size, (255, 255, 255))
            background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
            return background
        return image.convert("RGB")  # also CMYK and grayscale JPEGs, as found in COCO
    except Image.DecompressionBombError as error:
        raise ImageRejected(str(error)) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageRejected(f"corrupt or truncated image: {error}") from None


# ISO base media brands of video files (MP4, QuickTime, 3GP); HEIC and AVIF photos share the box
# layout under brands of their own (heic, mif1, avif), so the brand decides.
VIDEO_BRANDS = (b"isom", b"iso2", b"mp41", b"mp42", b"avc1", b"M4V ", b"qt  ", b"3gp", b"3g2", b"dash", b"mmp4")


def looks_like_video(data: bytes) -> bool:
    """Whether the bytes start like a video file (MP4/MOV, Matroska/WebM, AVI): for an error that says
    so rather than "not an image"."""
    if data[4:8] == b"ftyp":
        return data[8:12].startswith(VIDEO_BRANDS)
    return data.startswith(b"\x1a\x45\xdf\xa3") or (data[:4] == b"RIFF" and data[8:12] == b"AVI ")


def _exif_upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block counts as none (phones and editors write
    broken ones, and a photo is still a photo)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # struct.error, KeyError, ValueError... from whatever the EXIF parser met
        return image


def _to_8_bit(image: Image.Image) -> Image.Image:
    """Integer grayscale of more than 8 bits, scaled (not clipped) into 0..255, in 32-bit integers (a
    float64 copy of a 40-megapixel scan was 320 MB)."""
    values = np.asarray(image)
    top = 65535 if image.mode.startswith("I;16") or values.max() > 255 else 255
    scaled = np.clip(values, 0, top).astype(np.uint32)
    return Image.fromarray(((scaled * 255 + top // 2) // top).astype(np.uint8), "L")


def resize_and_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """Scale the shorter side to `size`, crop the centre square: (size, size, 3) uint8, no distortion."""
    width, height = image.size
    scale = size / min(width, height)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_width, new_height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (new_width - size) // 2, (new_height - size) // 2
    return np.array(image.crop((left, top, left + size, top + size)), dtype=np.uint8)  # writable, for torch


def fit_within(image: Image.Image, max_side: int) -> Image.Image:
    """Downscale (never upscale) so the longer side is at most `max_side`, keeping the aspect ratio."""
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in 0..255."""
    import torch

    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float()


def to_image(tensor: torch.Tensor) -> Image.Image:
    """(3, H, W) float in 0..255 -> RGB image."""
    array = tensor.detach().float().clamp(0, 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def encode(image: Image.Image, image_format: str = "jpeg", quality: int = 90) -> bytes:
    """Encode to 'jpeg', 'png' or 'webp' bytes."""
    if image_format not in ENCODE_FORMATS:
        raise ValueError(f"unsupported output format {image_format!r}; choose one of {', '.join(ENCODE_FORMATS)}")
    buffer = io.BytesIO()
    options = {"quality": quality} if image_format in ("jpeg", "webp") else {}
    image.save(buffer, ENCODE_FORMATS[image_format], **options)
    return buffer.getvalue()
