"""How a request's image bytes become stylised image bytes: decode, fit, run the model, finish, encode.

Shared by a style's own application (serve/style_app.py) and the style pool (serve/style_pool.py);
the model runs through `run_batch`, the caller's batching coroutine. No Ray, no HTTP parsing.
"""

from __future__ import annotations

import asyncio
import io
from typing import Awaitable, Callable

import torch
from PIL import Image

from factory import images
from serve import postprocess
from serve.http_input import ACCEPTED_INPUT_FORMATS, HTTPError, StyliseOptions
from serve.settings import EndpointSettings


def decode_image(data: bytes, settings: EndpointSettings) -> Image.Image:
    """Decode a JPEG, PNG or WebP; anything else is 415, a broken one 400, a too-big one 413."""
    try:
        header = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # a real image, declaring far more pixels than anyone sends
        raise HTTPError(413, f"image is over the limit of {settings.max_input_pixels} pixels: send a smaller one") from None
    except Exception:
        raise HTTPError(415, "not an image: send a JPEG, PNG or WebP file") from None
    if header.format not in ACCEPTED_INPUT_FORMATS:
        raise HTTPError(415, f"unsupported image format {header.format}: send a JPEG, PNG or WebP file")
    try:
        return images.decode_rgb(data, max_pixels=settings.max_input_pixels)
    except images.ImageRejected as error:
        status = 413 if "over the limit" in str(error) else 400
        raise HTTPError(status, f"unusable image: {error}") from None


async def stylise_image(data: bytes, options: StyliseOptions, settings: EndpointSettings,
                        run_batch: Callable[[torch.Tensor], Awaitable[torch.Tensor | Exception]]) -> bytes:
    """The encoded stylised image, or HTTPError. Decoding and encoding run off the event loop, so
    other requests and the health check keep flowing."""
    original = await asyncio.to_thread(lambda: images.fit_within(decode_image(data, settings), options.max_side))
    stylised = await run_batch(images.to_tensor(original))
    if isinstance(stylised, torch.OutOfMemoryError):
        raise HTTPError(503, f"not enough memory to stylise a {original.width}x{original.height} image now; "
                             "retry, or send a smaller one (max_side)")
    if isinstance(stylised, Exception):
        raise HTTPError(500, f"stylising failed: {type(stylised).__name__}")
    return await asyncio.to_thread(
        lambda: images.encode(postprocess.finish(images.to_image(stylised), original, options.strength, options.preserve_colors),
                              options.output_format)
    )
