from pathlib import Path

import pytest

from factory.settings import DEFAULT_LOSS_WEIGHTS, load_config
from factory.style_names import validate_style_name

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["tiny", "coco", "coco_s3"])
def test_shipped_configs_load(name):
    config = load_config(REPO_ROOT / "configs" / f"{name}.yaml")
    assert config.styles and config.training.batch_size % config.training.num_workers == 0


def test_auto_normalisation_keeps_the_seed_recipe_for_the_matconvnet_file_only():
    config = load_config(None, ["styles=[{name: a, image: a.jpg}]"])
    seed = config.loss.resolved("matconvnet:data/imagenet-vgg-verydeep-19.mat")
    assert (seed.normalisation, seed.content_weight, seed.style_weight, seed.tv_weight) == ("none", 7.5, 100.0, 200.0)
    for source in ("random", "torchvision", "torchvision-state-dict:data/vgg19.pth"):
        assert config.loss.resolved(source).normalisation == "per_layer"


def test_explicit_normalisation_and_weights_win_over_the_defaults():
    config = load_config(None, ["styles=[{name: a, image: a.jpg}]", "loss.normalisation=per_layer", "loss.style_weight=25"])
    resolved = config.loss.resolved("matconvnet:x.mat")
    assert resolved.normalisation == "per_layer" and resolved.style_weight == 25.0
    assert resolved.content_weight == DEFAULT_LOSS_WEIGHTS["per_layer"]["content_weight"]


def test_defaults_follow_the_paper_recipe():
    config = load_config(None, ["styles=[{name: a, image: a.jpg}]"])
    assert (config.training.batch_size, config.training.learning_rate, config.training.steps) == (4, 1e-3, 40_000)
    assert config.data.image_size == 256


def test_overrides_reach_nested_settings_and_parse_yaml_values():
    config = load_config(REPO_ROOT / "configs" / "tiny.yaml", ["training.steps=7", "loss.style_weight=1e3", "loss.style_layers=[relu1_1]"])
    assert config.training.steps == 7
    assert config.loss.style_weight == 1000.0
    assert config.loss.style_layers == ("relu1_1",)


def test_per_style_overrides_are_kept():
    config = load_config(REPO_ROOT / "configs" / "coco.yaml")
    woman = next(style for style in config.styles if style.name == "woman_with_hat")
    assert woman.style_weight == 150.0 and woman.steps is None


@pytest.mark.parametrize("override, message", [
    ("training.stepz=3", "unknown setting.*'stepz'.*known:.*steps"),
    ("training.steps=0", "training.steps must be >= 1"),
    ("training.steps=ten", "training.steps must be int"),
    ("loss.content_layer=relu9_9", "unknown VGG-19 layer 'relu9_9'"),
    ("training.precision=fp8", "training.precision must be one of"),
    ("loss.normalisation=global", "loss.normalisation must be one of auto, none, per_layer"),
    ("training.batch_size=3", "divisible by training.num_workers"),
    ("data.image_size=30", "multiple of 4"),
    ("styles=[]", "no styles"),
    ("styles=[{name: a, image: x.jpg}, {name: a, image: y.jpg}]", "unique; repeated: a"),
    ("styles=[{name: ../etc, image: x.jpg}]", "invalid style name"),
    ("styles=[{name: ok}]", "image"),
    ("training=5", "must be a mapping"),
    ("model.width=0.3", r"model.width must be one of 1.0, 0.5, 0.25, got 0.3"),
    ("styles=[{name: a, image: x.jpg, width: 2}]", r"style 'a': width must be one of 1.0, 0.5, 0.25, got 2"),
    ("nonsense", "section.key=value"),
    ("loss.stability_weight=-1", r"loss.stability_weight must be >= 0, got -1"),
    ("loss.stability_noise=0", r"loss.stability_noise must be in \(0, 64\]"),
    ("styles=[{name: a, image: x.jpg, stability_weight: -2}]", r"style 'a': stability_weight must be >= 0, got -2"),
])
def test_bad_settings_say_what_was_expected(override, message):
    overrides = ["training.num_workers=2"] if "divisible" in message else []
    with pytest.raises(ValueError, match=message):
        load_config(REPO_ROOT / "configs" / "tiny.yaml", overrides + [override])


def test_missing_config_file_says_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match="not found; pass --config"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", ["", "..", "a/b", "a\\b", ".hidden", "UPPER", "a b", "x" * 65, "-lead", None, 3])
def test_style_names_that_would_be_unsafe_paths_or_keys_are_refused(name):
    with pytest.raises(ValueError, match="invalid style name"):
        validate_style_name(name)


@pytest.mark.parametrize("name", ["starry_night", "the-scream", "a", "v2"])
def test_plain_style_names_are_accepted(name):
    assert validate_style_name(name) == name
