"""model.width: narrower transform networks, chosen in the config, part of a style's recipe, recorded in
its metadata and loaded at that width by everything that reads the registry (torch and ONNX Runtime).
The whole path (a Ray Train pack holding two widths, the pool serving them over HTTP) runs in
tests/test_training.py and tests/test_pool.py."""

import pytest
import torch

from factory import onnx_model, registry
from factory.packs import recipe, recipe_hash, resolve_style
from factory.settings import load_config
from factory.transform_net import TransformNet
from factory_runs import STYLES

STYLE_IMAGE = str(STYLES / "udnie.jpg")


def resolved(*overrides: str):
    config = load_config(None, [f"styles=[{{name: a, image: {STYLE_IMAGE}}}]", *overrides])
    return resolve_style(config.styles[0], config), config


def test_the_config_width_reaches_each_style_and_a_styles_own_width_wins():
    assert resolved()[0].width == 1.0
    assert resolved("model.width=0.5")[0].width == 0.5
    assert resolved("model.width=0.5", f"styles=[{{name: a, image: {STYLE_IMAGE}, width: 0.25}}]")[0].width == 0.25


def test_a_width_is_part_of_the_recipe_but_full_width_recipes_hash_as_before_widths_existed():
    """A narrower model is a different model (a rerun trains it rather than calling it published), while
    the catalogue published before widths existed keeps its hashes: upgrading retrains nothing."""
    full, config = resolved()
    half, half_config = resolved("model.width=0.5")
    full_recipe = recipe(full, config, "random")
    # The fields a style's recipe held before widths and families existed, and no other.
    assert set(full_recipe["style"]) == {"name", "image_sha256", "content_weight", "style_weight", "tv_weight", "steps", "learning_rate"}
    assert "family_method" not in full_recipe["training"] and "pack_mode" not in full_recipe["training"]
    assert recipe(half, half_config, "random")["style"]["width"] == 0.5
    assert recipe_hash(recipe(half, half_config, "random")) != recipe_hash(full_recipe)


def publish(root, width: float | None, with_onnx: bool = True) -> tuple[TransformNet, dict]:
    torch.manual_seed(3)
    net = TransformNet(width=width or 1.0).eval()
    architecture = {"name": "johnson2016-instancenorm", "upsample": "nearest"}
    if width is not None:  # None: metadata as versions from before widths existed wrote it
        architecture["width"] = width
    version = registry.publish(str(root), "style", net.state_dict(), {"architecture": architecture}, b"t", b"p",
                               onnx_model=onnx_model.export(net) if with_onnx else None)
    return net, registry.read_metadata(str(root), "style", version)


@pytest.mark.parametrize("width", [0.5, 0.25])
def test_a_narrow_version_loads_at_its_width_in_torch_and_in_onnx_runtime(tmp_path, width):
    net, metadata = publish(tmp_path, width)
    loaded = registry.load_net(str(tmp_path), metadata)
    assert loaded.width == width
    images = torch.rand(1, 3, 40, 36) * 255
    with torch.inference_mode():
        expected = net(images)
        assert torch.equal(loaded(images), expected)
        assert (onnx_model.OnnxTransformNet(registry.load_onnx(str(tmp_path), metadata))(images) - expected).abs().max() < 0.05


def test_a_version_from_before_widths_existed_loads_at_full_width(tmp_path):
    net, metadata = publish(tmp_path, None, with_onnx=False)
    loaded = registry.load_net(str(tmp_path), metadata)
    assert loaded.width == 1.0
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))


def test_weights_of_another_width_than_the_metadata_says_are_refused(tmp_path):
    """A version whose metadata disagrees with its weights stops at load, naming the mismatch, rather
    than serving a half-loaded network."""
    _, metadata = publish(tmp_path, 0.5, with_onnx=False)
    metadata = {**metadata, "architecture": {**metadata["architecture"], "width": 1.0}}
    with pytest.raises(ValueError, match=r"does not fit the architecture its metadata records .*'width': 1.0.*size mismatch"):
        registry.load_net(str(tmp_path), metadata)
