"""The quality figures, and training that can be seen to teach each style its own painting."""

import numpy as np
import pytest
import torch
from PIL import Image

from factory import images, quality
from factory.contact_sheet import SheetEntry, render
from factory.loss_network import LossNetwork
from factory.settings import LossSettings, ResolvedStyle
from factory.style_pack import PerceptualObjective, StepRunner, StylePack, make_optimizer
from factory.vgg_weights import random_vgg19


def textured(colour_a, colour_b, size=64, seed=0) -> Image.Image:
    """A painting-like texture: random strokes mixing two colours."""
    rng = np.random.default_rng(seed)
    mix = rng.random((size // 8, size // 8))
    mix = np.kron(mix, np.ones((8, 8)))[..., None]
    pixels = mix * np.array(colour_a) + (1 - mix) * np.array(colour_b) + rng.normal(0, 10, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def photo(seed=0, size=64) -> Image.Image:
    """A grey-ish scene with edges: a few rectangles of different brightness."""
    rng = np.random.default_rng(seed)
    pixels = np.full((size, size, 3), 120.0)
    for _ in range(6):
        top, left = rng.integers(0, size - 16, 2)
        pixels[top:top + 16, left:left + 16] = rng.integers(40, 220)
    return Image.fromarray(pixels.astype(np.uint8))


def test_colour_shift_is_zero_for_the_photo_and_one_for_the_painting():
    painting, scene = textured((20, 40, 200), (240, 220, 40)), photo()
    assert quality.colour_shift(scene, scene, painting) == 0.0
    assert abs(quality.colour_shift(painting, scene, painting) - 1.0) < 1e-6
    halfway = Image.blend(scene, painting, 0.5)
    assert 0.2 < quality.colour_shift(halfway, scene, painting) < 0.8


def test_structure_kept_is_one_for_the_photo_and_low_for_a_flat_or_unrelated_image():
    scene = photo()
    assert abs(quality.structure_kept(scene, scene) - 1.0) < 1e-9
    assert quality.structure_kept(Image.new("RGB", scene.size, (90, 90, 90)), scene) == 0.0
    assert quality.structure_kept(photo(seed=7), scene) < 0.5
    # Recolouring keeps the edges, and a different size is compared at the photo's size.
    recoloured = Image.merge("RGB", [band.point(lambda v: 255 - v) for band in scene.split()])
    assert quality.structure_kept(recoloured.resize((128, 128), Image.Resampling.NEAREST), scene) > 0.9


def test_each_style_of_a_pack_learns_its_own_paintings_colours():
    blue, orange = textured((20, 40, 200), (120, 180, 250), seed=1), textured((250, 120, 20), (200, 40, 30), seed=2)
    encoded = {"blue": images.encode(blue, "png"), "orange": images.encode(orange, "png")}
    styles = [ResolvedStyle(name=name, image_bytes=data, image_sha256="-", content_weight=1.0, style_weight=30.0,
                            tv_weight=0.1, steps=30, learning_rate=2e-3) for name, data in encoded.items()]
    settings = LossSettings(style_size=64, normalisation="per_layer")
    torch.manual_seed(0)
    loss_network = LossNetwork(random_vgg19(), [settings.content_layer, *settings.style_layers])
    pack = StylePack(list(encoded))
    runner = StepRunner(pack, PerceptualObjective(loss_network, settings, styles, "cpu"), make_optimizer(pack, styles), "fp32", "cpu")
    scenes = torch.stack([images.to_tensor(photo(seed)) for seed in range(8)])[:, :, :32, :32]
    for step in range(30):
        runner.step(scenes[(step * 4) % 8:(step * 4) % 8 + 4])

    test_photo = photo(seed=99)
    with torch.inference_mode():
        outputs = {name: images.to_image(net.eval()(images.to_tensor(test_photo).unsqueeze(0))[0]) for name, net in pack.nets.items()}
    own = {"blue": blue, "orange": orange}
    other = {"blue": orange, "orange": blue}
    for name, output in outputs.items():
        assert quality.colour_shift(output, test_photo, own[name]) > 0.3, name  # measured 0.6-0.8
        assert quality.colour_shift(output, test_photo, other[name]) < 0.0, name  # and away from the other painting
        assert quality.colour_distance(output, own[name]) < quality.colour_distance(output, other[name]), name


def test_contact_sheet_shows_the_photo_and_each_painting_above_its_output():
    scene, blue, orange = photo(), textured((20, 40, 200), (120, 180, 250)), textured((250, 120, 20), (200, 40, 30))
    sheet = render(scene, [SheetEntry("blue", blue, blue, "colour 1.00"), SheetEntry("orange", orange, orange)], "title")
    assert sheet.width > 3 * 256
    # Column 2 (the first style): the painting in the top row, its output below; both are blue.
    column = np.asarray(sheet)[:, 8 + 256 + 8 + 128]
    blue_rows = np.flatnonzero((column[:, 2] > 150) & (column[:, 0] < 150))
    assert len(blue_rows) > 400  # two 256 px cells of blue, one above the other


def test_colour_distance_is_the_frechet_distance_of_mean_and_covariance():
    """Checked against scipy's matrix square root on two images with the same mean colour and different
    spreads: the covariance term is all that separates them (FID's formula, in 0..1 pixel units)."""
    import scipy.linalg

    rng = np.random.default_rng(0)
    flat = Image.fromarray(np.full((64, 64, 3), 128, np.uint8))
    spread = np.clip(128 + rng.normal(0, 40, (64, 64, 3)), 0, 255).astype(np.uint8)
    spread -= (spread.mean(axis=(0, 1)).round() - 128).astype(np.uint8)  # the same mean colour as `flat`
    noisy = Image.fromarray(spread)
    a, b = (np.asarray(image, np.float64).reshape(-1, 3) / 255 for image in (flat, noisy))
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = np.sqrt(np.sum((a.mean(0) - b.mean(0)) ** 2)
                       + np.trace(cov_a + cov_b - 2 * scipy.linalg.sqrtm(cov_a @ cov_b).real))
    assert quality.colour_distance(flat, noisy) == pytest.approx(expected, rel=1e-6)
    assert expected > 10 * np.sqrt(np.sum((a.mean(0) - b.mean(0)) ** 2))  # the spread, not the mean, makes it
