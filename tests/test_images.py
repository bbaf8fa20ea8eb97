import io

import numpy as np
import pytest
from PIL import Image

from factory import images
from image_files import jpeg_declaring, mpo_photo, png_16_bit_gradient, png_declaring, webp_with_broken_exif


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "I;16"])
def test_every_mode_comes_out_rgb(mode):
    fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    image = Image.new(mode, (20, 10))
    decoded = images.decode_rgb(encoded(image, fmt), max_pixels=10_000)
    assert decoded.mode == "RGB" and decoded.size == (20, 10)


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (30, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    decoded = images.decode_rgb(encoded(image, "JPEG", exif=exif), max_pixels=10_000)
    assert decoded.size == (10, 30)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"hello, world" * 10, "not an image"),
])
def test_unusable_bytes_are_rejected_with_a_reason(data, reason):
    with pytest.raises(images.ImageRejected, match=reason):
        images.decode_rgb(data, max_pixels=10_000)


def test_truncated_image_is_rejected():
    data = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(images.ImageRejected, match="truncated|corrupt"):
        images.decode_rgb(data[: len(data) // 2], max_pixels=10_000)


def test_decompression_bomb_is_rejected_before_decoding():
    bomb = encoded(Image.new("L", (10_000, 10_000)), "PNG")  # ~100 kB that decodes to 100 MP
    assert len(bomb) < 200_000
    with pytest.raises(images.ImageRejected, match="over the limit"):
        images.decode_rgb(bomb, max_pixels=1_000_000)


def test_resize_and_center_crop_keeps_aspect_and_gives_the_square():
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 40, 100))  # a blue band on the left that a centre crop drops
    array = images.resize_and_center_crop(image, 32)
    assert array.shape == (32, 32, 3) and array.dtype == np.uint8
    assert array[..., 2].max() < 10  # no blue left: the crop is centred, not a squashed resize


def test_large_jpeg_decodes_at_reduced_scale_when_allowed():
    data = encoded(Image.new("RGB", (2048, 1536)), "JPEG")
    assert images.decode_rgb(data, max_pixels=10**8, min_side=256).size == (512, 384)
    assert images.decode_rgb(data, max_pixels=10**8).size == (2048, 1536)


def test_fit_within_only_shrinks():
    image = Image.new("RGB", (400, 200))
    assert images.fit_within(image, 100).size == (100, 50)
    assert images.fit_within(image, 1000).size == (400, 200)


@pytest.mark.parametrize("fmt, magic", [("jpeg", b"\xff\xd8"), ("png", b"\x89PNG"), ("webp", b"RIFF")])
def test_encode_formats(fmt, magic):
    assert images.encode(Image.new("RGB", (8, 8)), fmt).startswith(magic)


def test_tensor_round_trip_is_exact():
    array = np.random.default_rng(1).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(images.to_image(images.to_tensor(array))), array)


@pytest.mark.parametrize("data", [png_declaring(20_000, 20_000), jpeg_declaring(60_000, 60_000)], ids=["png", "jpeg"])
def test_a_header_declaring_a_huge_canvas_is_over_the_limit_not_unreadable(data):
    assert len(data) < 2_000
    with pytest.raises(images.ImageRejected, match="over the limit of 1000000 pixels"):
        images.decode_rgb(data, max_pixels=1_000_000)


def test_broken_exif_counts_as_no_exif():
    image = images.decode_rgb(webp_with_broken_exif(), max_pixels=10_000)
    assert image.size == (32, 24) and image.getpixel((5, 5))[0] > 150


def test_a_multi_picture_jpeg_decodes_its_first_frame():
    image = images.decode_rgb(mpo_photo(), max_pixels=10_000)
    assert image.getpixel((5, 5))[0] > 150  # the red photo, not the green second frame


def test_16_bit_grayscale_is_scaled_not_clipped_to_white():
    array = np.asarray(images.decode_rgb(png_16_bit_gradient(), max_pixels=10_000))
    assert array[0, 0, 0] < 5 and array[-1, -1, 0] > 250 and 100 < array.mean() < 155


def phone_photo(width=4032, height=3024) -> bytes:
    """A 12-megapixel JPEG, as phones take them (about 1-3 MB with detail)."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x // 7) % 256, (y // 5) % 256, ((x + y) // 11) % 256], axis=-1).astype(np.uint8)
    return encoded(Image.fromarray(pixels), "JPEG", quality=85)


def test_a_phone_photo_decodes_at_the_size_the_request_needs_not_in_full():
    data = phone_photo()
    decoded = images.decode_rgb(data, max_pixels=40_000_000, max_side=1024)
    # libjpeg's 1/2 scale, the smallest that keeps 1024 px: a quarter of the 12.2 megapixels decoded.
    assert (decoded.width, decoded.height) == (2016, 1512)
    assert images.decode_rgb(data, max_pixels=40_000_000, max_side=500).size == (504, 378)  # 1/8
    assert images.decode_rgb(data, max_pixels=40_000_000, max_side=3000).size == (4032, 3024)  # no smaller scale fits


def test_a_16_bit_scan_is_shrunk_before_it_becomes_8_bit_and_never_held_as_float64():
    import tracemalloc

    values = (np.linspace(0, 65535, 2000 * 1500) % 65536).astype(np.uint16).reshape(1500, 2000)
    data = encoded(Image.fromarray(values), "PNG")
    tracemalloc.start()
    decoded = images.decode_rgb(data, max_pixels=40_000_000, max_side=256)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert decoded.size == (256, 192)
    assert peak < 2000 * 1500 * 8 / 8, peak  # a float64 copy of the full scan is 24 MB
    assert abs(np.asarray(decoded)[..., 0].mean() - 127.5) < 3  # scaled, not clipped


@pytest.mark.parametrize("data", [png_declaring(20_000, 20_000), encoded(Image.new("L", (10_000, 10_000)), "PNG")],
                         ids=["header-only", "real-bomb"])
def test_an_over_limit_canvas_is_refused_before_a_pixel_is_decoded(data):
    """The limit bounds the cost: refused from the header, never held in memory (400 and 100 MB decoded)."""
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(images.ImageRejected, match="over the limit"):
        images.decode_rgb(data, max_pixels=40_000_000)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2_000_000, peak


@pytest.mark.parametrize("data", [png_declaring(20_000, 20_000), encoded(Image.new("L", (10_000, 10_000)), "PNG"),
                                  jpeg_declaring(20_000, 20_000)], ids=["png-header-only", "png-bomb", "jpeg-header-only"])
def test_an_over_limit_canvas_is_refused_without_decoding_starting(data, monkeypatch):
    """Pillow decodes in C, where tracemalloc sees nothing: a bomb decoded first and refused after would
    pass the memory test above. Every decode goes through ImageFile.load, so none may be called."""
    from PIL import ImageFile

    loads = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: loads.append(image.size) or original(image))
    with pytest.raises(images.ImageRejected, match="over the limit"):
        images.decode_rgb(data, max_pixels=40_000_000, max_side=1024)
    assert loads == []
