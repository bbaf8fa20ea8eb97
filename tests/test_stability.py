"""The stability loss (loss.stability_weight, Gupta et al. 2017) and the flicker figure (factory/flicker.py):
the loss's term and step, its place in the recipe, and the clips flicker is measured on. No Ray; a
pack trained with it on Ray Train and published is in tests/test_training.py, flicker with and without
it side by side in bench/flicker.py."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from factory import flicker
from factory.family import StyleFamily, UndrawnStylesKept
from factory.loss_network import LossNetwork
from factory.losses import stability_per_image
from factory.packs import plan_packs, recipe, recipe_hash, resolve_style
from factory.settings import LossSettings, ResolvedStyle, load_config
from factory.style_pack import PerceptualObjective, StepRunner, StylePack, make_optimizer
from factory.vgg_weights import random_vgg19
from factory_runs import STYLES

CPU = torch.device("cpu")
STYLE_IMAGE = str(STYLES / "udnie.jpg")


def pack_runner(stability_weights: dict[str, float], family: bool = False, content=3.0, style=10.0, tv=0.1) -> StepRunner:
    torch.manual_seed(0)
    names = list(stability_weights)
    styles = [ResolvedStyle(name=name, image_bytes=(STYLES / f"{name}.jpg").read_bytes(), image_sha256="-", content_weight=content,
                            style_weight=style, tv_weight=tv, stability_weight=weight, steps=10, learning_rate=1e-3)
              for name, weight in stability_weights.items()]
    settings = LossSettings(style_size=48, normalisation="per_layer", stability_noise=8.0)
    loss_network = LossNetwork(random_vgg19(seed=0).first(13), [settings.content_layer, *settings.style_layers])
    pack = StyleFamily(names) if family else StylePack(names, widths={name: 0.25 for name in names})
    objective = PerceptualObjective(loss_network, settings, styles, CPU)
    optimizer = make_optimizer(pack, styles)
    return StepRunner(pack, objective, optimizer, "fp32", "cpu",
                      undrawn_kept=UndrawnStylesKept(optimizer, pack.style_vectors) if family else None)


def output_change_under_noise(net, photos: torch.Tensor, noise_sd: float = 8.0) -> float:
    torch.manual_seed(123)
    with torch.no_grad():
        return float(stability_per_image(net(photos), net(photos + torch.randn_like(photos) * noise_sd), noise_sd).mean())


def test_the_stability_term_is_the_outputs_mean_squared_change_over_the_noise_variance():
    outputs = torch.zeros(2, 3, 4, 4)
    moved = outputs.clone()
    moved[1] += 4.0  # the second image's output moved by 4 everywhere
    assert stability_per_image(outputs, moved, noise_sd=2.0).tolist() == [0.0, 4.0]


def test_training_with_the_stability_loss_alone_makes_the_network_steadier_under_noise():
    """Only the stability term weighted: a few steps must lower how far the output moves under noise;
    noise that never reached the networks, or a term without gradient, would leave it where it was."""
    runner = pack_runner({"udnie": 1.0}, content=0.0, style=0.0, tv=0.0)
    net = runner.pack.nets["udnie"]
    photos = torch.rand(2, 3, 32, 32) * 255
    before = output_change_under_noise(net, photos)
    for _ in range(8):
        losses = runner.step(photos)
    assert "stability" in losses["udnie"]
    assert output_change_under_noise(net, photos) < 0.5 * before  # measured: about 0.1 of it


def test_a_pack_mixing_weights_reports_the_term_and_weights_it_per_style():
    runner = pack_runner({"udnie": 2.0, "the_scream": 0.0})
    photos = torch.rand(2, 3, 32, 32) * 255
    losses = runner.step(photos)
    for name, weight in (("udnie", 2.0), ("the_scream", 0.0)):
        parts = {key: float(value) for key, value in losses[name].items()}
        assert parts["stability"] > 0  # measured for every style of the pack, counted by its weight
        weighted = 3.0 * parts["content"] + 10.0 * parts["style"] + 0.1 * parts["tv"] + weight * parts["stability"]
        assert parts["total"] == pytest.approx(weighted, rel=1e-5)


def test_without_a_stability_weight_the_step_stylises_each_photo_once_and_reports_no_term():
    runner = pack_runner({"udnie": 0.0})
    calls = []
    runner.pack.nets["udnie"].register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    losses = runner.step(torch.rand(2, 3, 32, 32) * 255)
    assert "stability" not in losses["udnie"] and calls == [2]


def test_a_family_step_takes_the_stability_loss_with_each_images_style():
    runner = pack_runner({"udnie": 1.0, "the_scream": 1.0}, family=True)
    losses = runner.step(torch.rand(3, 3, 32, 32) * 255, [0, 1, 1], [0, 1])
    assert float(losses["udnie"]["images"]) == 1 and float(losses["the_scream"]["images"]) == 2  # not doubled by the noisy copies
    assert float(losses["udnie"]["stability"]) > 0 and float(losses["the_scream"]["stability"]) > 0


def resolved(*overrides: str):
    config = load_config(None, [f"styles=[{{name: a, image: {STYLE_IMAGE}}}]", *overrides])
    return resolve_style(config.styles[0], config), config


def test_the_stability_loss_is_in_the_recipe_when_on_and_absent_when_off():
    """Off, a recipe hashes as before the setting existed (upgrading retrains nothing); on, its weight and
    noise are the recipe, so a change of either trains a new model, and the metadata records them."""
    off, config = resolved()
    off_recipe = recipe(off, config, "random")
    assert "stability_weight" not in off_recipe["style"] and not {"stability_weight", "stability_noise"} & set(off_recipe["loss"])
    assert recipe_hash(recipe(*resolved("loss.stability_noise=4"), "random")) == recipe_hash(off_recipe)  # noise without the loss: nothing

    on, on_config = resolved("loss.stability_weight=1")
    on_recipe = recipe(on, on_config, "random")
    assert on_recipe["style"]["stability_weight"] == 1.0 and on_recipe["loss"]["stability_noise"] == 8.0
    louder = recipe(*resolved("loss.stability_weight=1", "loss.stability_noise=4"), "random")
    assert len({recipe_hash(off_recipe), recipe_hash(on_recipe), recipe_hash(louder)}) == 3
    own, _ = resolved("loss.stability_weight=1", f"styles=[{{name: a, image: {STYLE_IMAGE}, stability_weight: 3}}]")
    assert own.stability_weight == 3.0
    # What bench/quality.py and the held-out judging rebuild from a published recipe.
    assert LossSettings(**{**on_recipe["loss"], "style_layers": tuple(on_recipe["loss"]["style_layers"])}).stability_noise == 8.0
    assert dataclasses.replace(on, image_bytes=b"") == ResolvedStyle(**on_recipe["style"], image_bytes=b"")


def test_styles_with_the_stability_loss_pack_apart_from_those_without():
    """Its noisy pass runs for a whole pack: a style without the loss would pay for it."""
    entries = ", ".join(f"{{name: {name}, image: {STYLE_IMAGE}{', stability_weight: 1' if name in ('b', 'd') else ''}}}" for name in "abcd")
    config = load_config(None, [f"styles=[{entries}]", "training.styles_per_pack=4"])
    styles = [resolve_style(spec, config) for spec in config.styles]
    plans = plan_packs(config, styles, {style.name: recipe_hash(recipe(style, config, "random")) for style in styles})
    assert sorted(plan.style_names for plan in plans) == [["a", "c"], ["b", "d"]]


def photo(width=96, height=64) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_a_pan_clip_moves_its_window_a_pixel_a_frame():
    clip = flicker.pan_clip(photo(), side=32, frames=5)
    assert clip.shape == (5, 32, 32, 3) and clip.dtype == np.uint8
    for earlier, later in zip(clip, clip[1:]):
        assert np.array_equal(earlier[:, 1:], later[:, :-1]) and not np.array_equal(earlier, later)


def test_a_noisy_clip_is_one_still_with_fresh_noise_each_frame():
    still = Image.new("RGB", (64, 64), (120, 120, 120))
    clip = flicker.noisy_clip(still, side=32, frames=6, noise_sd=3.0)
    assert clip.shape == (6, 32, 32, 3)
    assert abs(float(clip.astype(np.float32).mean()) - 120) < 0.5 and 2.5 < float(clip.astype(np.float32).std()) < 3.5
    assert not np.array_equal(clip[0], clip[1])


def test_flicker_is_one_for_a_stylist_that_changes_nothing_and_grows_with_amplified_change():
    clip = flicker.noisy_clip(photo(), side=32, frames=6)
    assert flicker.flicker(lambda frames: frames, clip, batch_size=4) == pytest.approx(1.0)
    mean = clip.astype(np.float32).mean(axis=0)

    def amplify(frames):  # each frame's difference from the mean frame, doubled
        return np.clip(mean + 2 * (frames.astype(np.float32) - mean), 0, 255).round().astype(np.uint8)

    assert flicker.flicker(amplify, clip) > 1.5
    assert flicker.flicker(lambda frames: np.repeat(frames[:1], len(frames), axis=0), clip, batch_size=2) < 1.0  # held between batches


def test_a_clip_of_one_frame_has_no_change_to_measure():
    with pytest.raises(ValueError, match="at least two frames"):
        flicker.mean_frame_change(np.zeros((1, 4, 4, 3), np.uint8))
