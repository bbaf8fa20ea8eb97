"""The front door's side of POST /orders: the token, the form and the painting, checked before the desk
(serve/order_desk.py) sees anything, so that a bad request costs no storage and no desk time."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from factory import images
from factory.settings import require_width
from factory.style_names import validate_style_name
from serve.http_input import HTTPError, form_fields
from serve.settings import OrdersSettings

FORM_HELP = ("send a multipart form with the painting as a file field 'painting', the new style's 'name', and optionally "
             "'family' (a published family to join; empty for a network of its own) and 'width' (a network of its own's)")
MAX_TEXT_FIELD = 200


@dataclass(frozen=True)
class OrderForm:
    name: str
    family: str | None  # None: the desk's default; "": a network of its own
    width: float | None
    painting: bytes
    painting_info: dict


def _text(value: bytes, field: str) -> str:
    if len(value) > MAX_TEXT_FIELD:
        raise HTTPError(400, f"the form's {field!r} is longer than {MAX_TEXT_FIELD} bytes")
    try:
        return value.decode().strip()
    except UnicodeDecodeError:
        raise HTTPError(400, f"the form's {field!r} is not UTF-8 text") from None


def check_painting(data: bytes, settings: OrdersSettings) -> dict:
    """The painting decoded as training will decode it (any upload's checks: pixels, truncation, 16-bit,
    EXIF rotation, an animation's first frame), and at least min_painting_side on its shorter side."""
    try:
        image = images.decode_rgb(data, max_pixels=settings.max_painting_pixels)
    except images.ImageRejected as error:
        raise HTTPError(400, f"the painting is unusable: {error}") from None
    if min(image.size) < settings.min_painting_side:
        raise HTTPError(400, f"the painting is {image.width}x{image.height}: a style needs at least "
                             f"{settings.min_painting_side} px on its shorter side (a photo of the whole painting, 512 px or more, is best)")
    return {"bytes": len(data), "width": image.width, "height": image.height, "sha256": hashlib.sha256(data).hexdigest()}


def parse_order_form(body: bytes, content_type: str, settings: OrdersSettings) -> OrderForm:
    """POST /orders' form, every field checked. Runs off the event loop (the painting is decoded)."""
    if not body:
        raise HTTPError(400, f"empty request body: {FORM_HELP}")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for name, filename, payload in form_fields(body, content_type):
        if name in fields:
            raise HTTPError(400, f"the form has two fields named {name!r}")
        fields[name or ""] = (filename, payload)
    unknown = sorted(set(fields) - {"painting", "name", "family", "width"})
    if unknown:
        raise HTTPError(400, f"unknown form field(s) {', '.join(map(repr, unknown))}: {FORM_HELP}")
    if "painting" not in fields or not fields["painting"][1]:
        raise HTTPError(400, f"the form has no painting: {FORM_HELP}")
    if "name" not in fields:
        raise HTTPError(400, f"the form has no name: {FORM_HELP}")
    name = _text(fields["name"][1], "name")
    try:
        validate_style_name(name)
    except ValueError as error:
        raise HTTPError(400, f"name: {error}") from None
    family = _text(fields["family"][1], "family") if "family" in fields else None
    width = None
    if "width" in fields:
        raw = _text(fields["width"][1], "width")
        try:
            width = float(raw)
            require_width(width, "width")
        except ValueError as error:
            raise HTTPError(400, f"width {raw!r}: {error}" if "width" in str(error) else f"width must be a number, got {raw!r}") from None
    painting = fields["painting"][1]
    return OrderForm(name, family, width, painting, check_painting(painting, settings))
