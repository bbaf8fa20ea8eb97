"""One picture of a factory run: the sample photo, then for each style its painting above its output.

Written to `<registry>/contact_sheet.jpg` at the end of every run, so a person can see in one look
whether the models stylise, and which ones do not.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

CELL = 256  # width of every cell; heights follow each image's aspect ratio
CAPTION_HEIGHT = 44
MARGIN = 8
BACKGROUND, INK = (250, 250, 248), (30, 30, 30)


@dataclass
class SheetEntry:
    name: str
    style_image: Image.Image
    output: Image.Image
    # Printed under the output, e.g. "colour 0.72  structure 0.41".
    caption: str = ""


def _fit_width(image: Image.Image, width: int) -> Image.Image:
    height = max(1, round(image.height * width / image.width))
    return image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def render(photo: Image.Image, entries: list[SheetEntry], title: str = "") -> Image.Image:
    """Columns: the photo, then one per style (painting on top, output below, name and caption under)."""
    photo_cell = _fit_width(photo, CELL)
    styles = [_fit_width(entry.style_image, CELL) for entry in entries]
    outputs = [_fit_width(entry.output, CELL) for entry in entries]
    top_height = max([image.height for image in styles] or [0])
    bottom_height = max([photo_cell.height, *(image.height for image in outputs)])
    columns = 1 + len(entries)
    width = MARGIN + columns * (CELL + MARGIN)
    height = MARGIN + top_height + MARGIN + bottom_height + CAPTION_HEIGHT + MARGIN
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    bold, small = _font(16), _font(13)
    bottom_y = MARGIN + top_height + MARGIN
    caption_y = bottom_y + bottom_height + 4

    draw.multiline_text((MARGIN, MARGIN), title, fill=INK, font=small, spacing=4)
    sheet.paste(photo_cell, (MARGIN, bottom_y))
    draw.text((MARGIN, caption_y), "held-out photo", fill=INK, font=bold)
    for column, (entry, style_image, output) in enumerate(zip(entries, styles, outputs), start=1):
        x = MARGIN + column * (CELL + MARGIN)
        sheet.paste(style_image, (x, MARGIN + top_height - style_image.height))  # paintings sit on the row's base
        sheet.paste(output, (x, bottom_y))
        draw.text((x, caption_y), entry.name, fill=INK, font=bold)
        draw.text((x, caption_y + 20), entry.caption, fill=INK, font=small)
    return sheet
