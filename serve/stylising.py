"""How a request's image bytes become stylised image bytes: decode, fit, run the model, finish, encode.

Shared by a style's own application (serve/style_app.py) and the style pool (serve/style_pool.py);
the model runs through `run_batch`, the caller's batching coroutine, which runs `run_model` on a
batch. Each step's time comes back with the image, for the response's Server-Timing header: decode,
queue (waiting for a batch and a free core or GPU), model, encode. No Ray, no HTTP parsing.
"""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import torch
from PIL import Image

from factory import images
from serve import postprocess
from serve.http_input import ACCEPTED_INPUT_FORMATS, VIDEO_REFUSAL, HTTPError, StyliseOptions
from serve.settings import EndpointSettings
from serve.style_model import RunFailure, StyleModel


@dataclass(frozen=True)
class ModelRun:
    output: torch.Tensor | RunFailure
    seconds: float  # how long the run took, shared by the images batched together


def run_model(model: StyleModel, tensors: list[torch.Tensor], styles: list[torch.Tensor] | None = None) -> list[ModelRun]:
    """A batch through the model (on the caller's thread), each image's result with the run's time.
    styles: each image's style vector, for a family's model."""
    start = time.perf_counter()
    outputs = model.forward_by_size(tensors, styles)
    seconds = time.perf_counter() - start
    return [ModelRun(output, seconds) for output in outputs]


def decode_image(data: bytes, settings: EndpointSettings, max_side: int | None = None) -> Image.Image:
    """Decode a JPEG, PNG or WebP; anything else is 415, a broken one 400, a too-big one 413."""
    try:
        header = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # a real image, declaring far more pixels than anyone sends
        raise HTTPError(413, f"image is over the limit of {settings.max_input_pixels} pixels: send a smaller one") from None
    except Exception:
        if images.looks_like_video(data):
            raise HTTPError(415, VIDEO_REFUSAL) from None
        raise HTTPError(415, "not an image: send a JPEG, PNG or WebP file") from None
    if header.format not in ACCEPTED_INPUT_FORMATS:
        raise HTTPError(415, f"unsupported image format {header.format}: send a JPEG, PNG or WebP file")
    try:
        # At the size the request needs (JPEG's reduced-scale decoding), not at the upload's full size.
        return images.decode_rgb(data, max_pixels=settings.max_input_pixels, max_side=max_side)
    except images.ImageRejected as error:
        status = 413 if "over the limit" in str(error) else 400
        raise HTTPError(status, f"unusable image: {error}") from None


async def stylise_image(data: bytes, options: StyliseOptions, settings: EndpointSettings,
                        run_batch: Callable[[torch.Tensor], Awaitable[ModelRun]]) -> tuple[bytes, dict[str, float]]:
    """The encoded stylised image and each step's milliseconds, or HTTPError. Decoding and encoding
    run off the event loop, so other requests and the health check keep flowing."""
    start = time.perf_counter()
    original = await asyncio.to_thread(lambda: images.fit_within(decode_image(data, settings, options.max_side), options.max_side))
    decoded = time.perf_counter()
    run = await run_batch(images.to_tensor(original))
    ran = time.perf_counter()
    if isinstance(run.output, RunFailure) and run.output.out_of_memory:
        raise HTTPError(503, f"not enough memory to stylise a {original.width}x{original.height} image now; "
                             "retry, or send a smaller one (max_side)")
    if isinstance(run.output, RunFailure):
        raise HTTPError(500, f"stylising failed: {run.output.reason.split(':')[0]}")
    image = await asyncio.to_thread(
        lambda: images.encode(postprocess.finish(images.to_image(run.output), original, options.strength, options.preserve_colors),
                              options.output_format)
    )
    milliseconds = {"decode": decoded - start, "queue": max(0.0, ran - decoded - run.seconds), "model": run.seconds,
                    "encode": time.perf_counter() - ran}
    return image, {step: round(1e3 * seconds, 1) for step, seconds in milliseconds.items()}
