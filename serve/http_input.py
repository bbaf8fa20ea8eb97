"""Turning an untrusted HTTP request into image bytes and options, or a clear JSON error. No torch, no
decoding (serve/stylising.py decodes): the front door that parses requests stays a small process.

Every size a client controls here is bounded: the body is read in chunks and abandoned past the
limit (413), a form's parts and their headers are capped, and so is max_side (the image's pixels are
checked against their limit before decoding, in serve/stylising.py).
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass

from factory.style_names import validate_style_name
from serve.settings import EndpointSettings

# MPO is a JPEG with more pictures after the first (gain-map HDR photos from recent phones): Pillow
# names it MPO and decodes its first frame, the photo.
ACCEPTED_INPUT_FORMATS = {"JPEG", "MPO", "PNG", "WEBP"}
MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}

# Video is not stylised over HTTP (docs/bulk-and-video.md says why): a request names where it is done.
VIDEO_REFUSAL = ("a video: the HTTP API stylises images, one a request; stylise a clip where the registry is, with "
                 "`python -m factory.stylize --style <style> clip.mp4 -o out.mp4` (see docs/bulk-and-video.md)")


CLIENT_CLOSED = 499  # nginx's status for a request whose client closed the connection first


class HTTPError(Exception):
    def __init__(self, status: int, message: str, retry_after_s: float | None = None):
        """retry_after_s: for a 503, when trying again may work (the default Retry-After otherwise)."""
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class StyliseOptions:
    max_side: int
    strength: float
    preserve_colors: bool
    output_format: str  # "jpeg", "png" or "webp"
    blend: tuple[tuple[str, float], ...] = ()  # ?blend=starry_night:0.7,the_scream:0.3: (style, weight) pairs


# A blend mixes a few styles of one family: more names would only make a client-controlled loop longer.
MAX_BLEND_STYLES = 8
MAX_BLEND_WEIGHT = 10.0


# Headers with which a client could steer Serve's own routing: Ray 2.60's proxy reads the model id
# header in any case and with - or _ (ray/serve/_private/proxy.py), and each value it routes is kept in
# its router until the same value comes again. Compared as the proxy does: lower case, - as _.
ROUTING_HEADERS = {"serve_multiplexed_model_id"}


def refuse_routing_headers(headers) -> None:
    """400 for a request that carries a header of Serve's internal routing (docs/operations.md's nginx strips them)."""
    for header in headers:
        if header.lower().replace("-", "_") in ROUTING_HEADERS:
            raise HTTPError(400, f"the {header} header is Ray Serve's internal routing and may not be sent; drop it")


async def read_stylise_request(request, settings: EndpointSettings) -> tuple[bytes, StyliseOptions]:
    """A stylise request's image bytes and options: options first (a bad one is 400 before any body is
    read), then the bounded body, then the form parsed off the event loop, so that a large form holds
    up neither other requests nor the health check."""
    options = parse_options(request.query_params, request.headers.get("accept", ""), settings)
    body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
    data = await asyncio.to_thread(image_bytes_from_body, body, request.headers.get("content-type", ""))
    return data, options


def stylised_response(image: bytes, options: StyliseOptions, style: str, version: str, timings_ms: dict[str, float]):
    """The image, with its style and version, and where its time went (Server-Timing: browsers' developer
    tools show it; "queue" growing while "model" holds steady means the endpoint needs more replicas)."""
    from fastapi.responses import Response  # here: model code reads HTTPError and the options without FastAPI (the GPU kit)

    timing = ", ".join(f"{step};dur={milliseconds}" for step, milliseconds in timings_ms.items())
    headers = {"X-Style": style, "X-Model-Version": version, "Server-Timing": timing,
               "Vary": "Accept"}  # the format follows the Accept header: caches must key on it
    if options.blend:
        headers["X-Blend"] = ",".join(f"{name}:{weight:g}" for name, weight in options.blend)
    return Response(image, media_type=MEDIA_TYPES[options.output_format], headers=headers)


async def read_body(request, max_bytes: int, timeout_s: float) -> bytes:
    """The request body; 413 as soon as it is known to be larger than max_bytes, 408 when it has not
    all arrived within timeout_s. The deadline is ours because Serve's own request timeout is not a
    bound: Ray 2.60's proxy lets any client switch it off with an `x-request-timeout-seconds: 0` header."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPError(413, f"request body of {declared} bytes is over the limit of {max_bytes} bytes")
    from starlette.requests import ClientDisconnect  # here: the GPU kit imports this module without Starlette

    chunks, size = [], 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout=max(0.0, deadline - loop.time()))
        except StopAsyncIteration:
            return b"".join(chunks)
        except asyncio.TimeoutError:
            raise HTTPError(408, f"the request body did not arrive within {timeout_s:g} s ({size} bytes came): send it "
                                 "faster, or a smaller image") from None
        except ClientDisconnect:  # nobody to answer: counted as the client's doing, not a server error
            raise HTTPError(CLIENT_CLOSED, f"the client closed the connection after {size} bytes of the body") from None
        size += len(chunk)
        if size > max_bytes:
            raise HTTPError(413, f"request body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)


# A form with an image needs one or two parts; a body of thousands is an attack on the parser.
MAX_FORM_PARTS = 16
MAX_PART_HEADER_BYTES = 8 * 1024
_CONTENT_DISPOSITION = re.compile(rb'^content-disposition:[^\r\n]*', re.IGNORECASE | re.MULTILINE)


def _disposition_value(header: bytes, key: str) -> str | None:
    match = re.search(rb';\s*' + key.encode() + rb'="([^"]*)"', header) or re.search(rb';\s*' + key.encode() + rb'=([^;\s]+)', header)
    return match.group(1).decode("latin-1") if match else None


def image_bytes_from_body(body: bytes, content_type: str) -> bytes:
    """The image: the raw body, or the 'image' field (else the first file) of a multipart form."""
    if not body:
        raise HTTPError(400, "empty request body: send the image as the body or as a multipart form field named 'image'")
    if not content_type.lower().startswith("multipart/form-data"):
        return body
    fields = form_fields(body, content_type)
    if not fields:
        raise HTTPError(400, "malformed multipart body: send a form with a file field named 'image'")
    chosen = next((field for field in fields if field[0] == "image"), None) or next((field for field in fields if field[1]), None)
    if chosen is None:
        raise HTTPError(400, "multipart form has no field named 'image'")
    if not chosen[2]:
        raise HTTPError(400, "the form's 'image' field is empty")
    return chosen[2]


def form_fields(body: bytes, content_type: str) -> list[tuple[str | None, str | None, bytes]]:
    """A multipart form's parts as (name, filename, bytes).

    The form is split with bytes.split and bounded searches, linear in the body's size whatever it
    holds; email.parser took 8 s on 19 MB of newlines and a minute on 300k tiny parts. Callers run
    this off the event loop all the same.
    """
    if not content_type.lower().startswith("multipart/form-data"):
        raise HTTPError(400, f"expected a multipart/form-data body, got Content-Type {content_type[:100]!r}")
    boundary = _disposition_value(b"; " + content_type.encode("latin-1", "replace"), "boundary")
    if not boundary or len(boundary) > 200:
        raise HTTPError(400, "malformed multipart body: the Content-Type names no boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    if body.count(delimiter) > MAX_FORM_PARTS + 1:
        raise HTTPError(400, f"multipart form has too many parts (at most {MAX_FORM_PARTS})")
    fields = []
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):  # the closing delimiter
            break
        header_end = part.find(b"\r\n\r\n", 0, MAX_PART_HEADER_BYTES)
        if header_end < 0:
            raise HTTPError(400, f"malformed multipart body: a part's headers are missing or longer than {MAX_PART_HEADER_BYTES} bytes")
        disposition = _CONTENT_DISPOSITION.search(part[:header_end])
        if disposition is None:
            continue
        payload = part[header_end + 4:]
        if payload.endswith(b"\r\n"):
            payload = payload[:-2]
        fields.append((_disposition_value(disposition.group(0), "name"), _disposition_value(disposition.group(0), "filename"), payload))
    return fields


def _number(query, name: str, kind, low, high, default):
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise HTTPError(400, f"{name} must be a {kind.__name__} between {low} and {high}, got {raw!r}") from None
    if not low <= value <= high:
        raise HTTPError(400, f"{name} must be between {low} and {high}, got {raw!r}")
    return value


def format_from_accept(accept: str) -> str:
    """The output format an Accept header prefers: the highest q among image/jpeg, png and webp (the
    first listed on a tie), image/* or */* meaning JPEG; JPEG when it names none of them."""
    by_media = {media: fmt for fmt, media in MEDIA_TYPES.items()}
    best, best_quality = "jpeg", -1.0
    for item in (accept or "").split(","):
        media, *parameters = [part.strip() for part in item.split(";")]
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.lower()
        fmt = by_media.get(media) or ("jpeg" if media in ("image/*", "*/*") else None)
        if fmt and quality > 0 and quality > best_quality:
            best, best_quality = fmt, quality
    return best


def parse_options(query, accept: str, settings: EndpointSettings) -> StyliseOptions:
    """Query parameters: max_side, strength (0..1), preserve_colors, format (or the Accept header), blend."""
    output_format = (query.get("format") or "").lower()
    if not output_format:
        output_format = format_from_accept(accept)
    output_format = {"jpg": "jpeg"}.get(output_format, output_format)
    if output_format not in MEDIA_TYPES:
        raise HTTPError(400, f"format must be one of jpeg, png, webp, got {output_format!r}")
    preserve = (query.get("preserve_colors") or "false").lower()
    if preserve not in ("true", "false", "1", "0", "yes", "no"):
        raise HTTPError(400, f"preserve_colors must be true or false, got {preserve!r}")
    return StyliseOptions(
        max_side=_number(query, "max_side", int, 16, settings.max_side_limit, settings.default_max_side),
        strength=_number(query, "strength", float, 0.0, 1.0, 1.0),
        preserve_colors=preserve in ("true", "1", "yes"),
        output_format=output_format,
        blend=parse_blend(query.get("blend")),
    )


def parse_blend(raw: str | None) -> tuple[tuple[str, float], ...]:
    """"starry_night:0.7,the_scream:0.3" -> (("starry_night", 0.7), ("the_scream", 0.3)); () when absent.
    Weights need not sum to 1 (as in Magenta): each must be a finite number within +-MAX_BLEND_WEIGHT."""
    if not raw:
        return ()
    example = "as in blend=starry_night:0.7,the_scream:0.3"
    items = raw.split(",")
    if len(items) > MAX_BLEND_STYLES:
        raise HTTPError(400, f"blend names {len(items)} styles; at most {MAX_BLEND_STYLES} can be mixed")
    blend = []
    for item in items:
        name, colon, weight_text = item.strip().partition(":")
        if not colon:
            raise HTTPError(400, f"blend must list style:weight pairs separated by commas ({example}), got {item!r}")
        try:
            validate_style_name(name)
            weight = float(weight_text)
        except ValueError as error:
            reason = str(error) if "style name" in str(error) else f"the weight of {name!r} must be a number, got {weight_text!r}"
            raise HTTPError(400, f"bad blend ({example}): {reason}") from None
        if not math.isfinite(weight) or abs(weight) > MAX_BLEND_WEIGHT:
            raise HTTPError(400, f"the blend weight of {name!r} must be a finite number between -{MAX_BLEND_WEIGHT:g} and "
                                 f"{MAX_BLEND_WEIGHT:g}, got {weight_text!r}")
        if name in dict(blend):
            raise HTTPError(400, f"blend names {name!r} twice: give each style once, with its weight")
        blend.append((name, weight))
    return tuple(blend)
