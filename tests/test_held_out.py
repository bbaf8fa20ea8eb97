"""Photos a model is judged on are never ones it trained on (factory/held_out.py); no Ray."""

import pytest
import torch

from factory.held_out import check_held_out, inside, read_held_out
from factory.publishing import held_out_figures
from factory.settings import load_config
from factory.transform_net import TransformNet
from factory_runs import REPO_ROOT, STYLES

SAMPLES = REPO_ROOT / "data" / "samples"


def config_with(*settings: str):
    return load_config(None, [f"styles=[{{name: a, image: {STYLES / 'udnie.jpg'}}}]", f"data.source={SAMPLES / 'content'}", *settings])


def test_the_default_photos_are_outside_the_bundled_training_photos():
    config = load_config(str(REPO_ROOT / "configs" / "tiny.yaml"), [])
    training = {path.name for path in (REPO_ROOT / config.data.source).iterdir()}
    judged = {config.preview_image.rsplit("/", 1)[-1], *(uri.rsplit("/", 1)[-1] for uri in config.evaluation_photos)}
    assert training and judged and not training & judged
    check_held_out(config)


@pytest.mark.parametrize("setting", ["preview_image", "evaluation_photos"])
def test_a_photo_under_data_source_is_refused_before_training(setting):
    training_photo = str(SAMPLES / "content" / "coffee.png")
    value = f"[{training_photo}]" if setting == "evaluation_photos" else training_photo
    with pytest.raises(ValueError, match=f"{setting} '.*coffee.png' is inside data.source .*a photo outside data.source"):
        check_held_out(config_with(f"{setting}={value}", f"preview_image={SAMPLES / 'held_out' / 'chelsea.png'}"
                                   if setting == "evaluation_photos" else f"evaluation_photos=[{SAMPLES / 'held_out' / 'rocket.jpg'}]"))


def test_inside_compares_resolved_paths_and_s3_prefixes(tmp_path):
    assert inside(str(tmp_path / "a" / ".." / "src" / "x.jpg"), str(tmp_path / "src"))
    assert not inside(str(tmp_path / "src2" / "x.jpg"), str(tmp_path / "src"))
    assert inside("s3://bucket/coco/train/x.jpg", "s3://bucket/coco/train/")
    assert not inside("s3://bucket/coco/train2/x.jpg", "s3://bucket/coco/train")
    assert not inside("s3://bucket/coco/x.jpg", str(tmp_path))


def test_the_figures_are_the_mean_over_every_evaluation_photo_and_each_photos_are_kept():
    config = config_with(f"evaluation_photos=[{SAMPLES / 'held_out' / 'chelsea.png'}, {SAMPLES / 'held_out' / 'rocket.jpg'}]",
                         f"preview_image={SAMPLES / 'held_out' / 'rocket.jpg'}")
    photos = read_held_out(config)
    assert photos.preview_name == "rocket.jpg" and list(photos.evaluation) == ["chelsea.png", "rocket.jpg"]
    assert max(photos.preview.size) == 512
    from PIL import Image

    torch.manual_seed(0)
    figures = held_out_figures(TransformNet().eval(), photos, Image.open(STYLES / "udnie.jpg").convert("RGB"))
    per_photo = figures["photos"]
    assert per_photo["chelsea.png"] != per_photo["rocket.jpg"]
    for key in ("colour_shift", "structure_kept"):
        assert figures[key] == pytest.approx((per_photo["chelsea.png"][key] + per_photo["rocket.jpg"][key]) / 2, abs=1e-4)


def test_two_evaluation_photos_of_one_name_are_refused(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "chelsea.png").write_bytes((SAMPLES / "held_out" / "chelsea.png").read_bytes())
    config = config_with(f"evaluation_photos=[{SAMPLES / 'held_out' / 'chelsea.png'}, {tmp_path / 'other' / 'chelsea.png'}]")
    with pytest.raises(ValueError, match="two photos called 'chelsea.png'"):
        read_held_out(config)
