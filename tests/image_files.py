"""Small image files that declare enormous sizes in their headers, as a hostile client would send."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few hundred bytes whose IHDR says width x height."""
    buffer = io.BytesIO()
    Image.new("L", (4, 4)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    start = 8 + 8  # signature, then the IHDR chunk's length and type
    data[start:start + 8] = struct.pack(">II", width, height)
    data[start + 13:start + 17] = struct.pack(">I", zlib.crc32(bytes(data[start - 4:start + 13])))
    return bytes(data)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A JPEG whose start-of-frame marker says width x height (at most 65535 each)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    frame = data.index(b"\xff\xc0")  # baseline start of frame: marker, length, precision, height, width
    data[frame + 5:frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_with_broken_exif() -> bytes:
    """A WebP photo whose EXIF block has a damaged TIFF header (as byte-flipped files from the wild do)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    data = bytearray(exif.tobytes())
    data[data.index(b"MM") + 1] = 0xA9  # "MM" -> "M\xa9": no longer a TIFF byte-order mark
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(buffer, "WEBP", exif=bytes(data))
    return buffer.getvalue()


def mpo_photo() -> bytes:
    """A multi-picture JPEG (MPO), as phones write for gain-map HDR: the photo, then a second frame."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(buffer, "MPO", save_all=True, append_images=[Image.new("RGB", (32, 24), (10, 200, 10))])
    return buffer.getvalue()


def png_16_bit_gradient() -> bytes:
    """A 16-bit grayscale PNG running from black to white."""
    import numpy as np

    buffer = io.BytesIO()
    Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)).save(buffer, "PNG")
    return buffer.getvalue()
