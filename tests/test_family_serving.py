"""Serving a style family without Ray: one model per family version, a style vector per image, blends,
and the blend parameter as clients write it."""

import pytest
import torch

from factory import registry
from serve.http_input import MAX_BLEND_STYLES, HTTPError, parse_blend
from serve.registry_view import PublishedStyle, parse_model_id, public_metadata
from serve.style_model import StyleModel
from serve.style_vectors import StyleVectors
from serving import publish_random_family, publish_random_style


@pytest.fixture
def family_registry(tmp_path):
    root = tmp_path / "registry"
    versions = publish_random_family(root, ("fa", "fb", "fc"), seed=5, family="fam")
    return str(root), versions


def published(root: str, style: str) -> PublishedStyle:
    metadata = registry.read_metadata(root, style)
    return PublishedStyle(style, metadata["version"], public_metadata(metadata))


def test_a_familys_styles_share_one_model_id_and_a_separate_style_keeps_its_own(family_registry, tmp_path):
    root, versions = family_registry
    publish_random_style(tmp_path / "registry", "solo", seed=1)
    ids = {published(root, name).model_id for name in versions}
    assert len(ids) == 1  # Serve batches by model id: one id is what lets the family's styles share batches
    (family_id,) = ids
    family = registry.read_family_metadata(root, "fam")["family"]
    reference = parse_model_id(family_id)  # what a pool replica loads: the family's version
    assert (reference.name, reference.version, reference.is_family) == ("fam", family["version"], True)
    solo = published(root, "solo")
    assert solo.model_id == f"solo:{solo.version}" and not parse_model_id(solo.model_id).is_family


@pytest.mark.parametrize("fast", [True, False], ids=["onnxruntime", "torch"])
def test_one_batch_carries_a_different_style_or_blend_per_image(family_registry, fast):
    """Three images of one size in one batch, each with its own vector, come out as each style's own
    network (the registry's FamilyStyle) draws them one by one."""
    root, versions = family_registry
    model = StyleModel(root, "fam", registry.read_family_metadata(root, "fam")["family"]["version"], device=torch.device("cpu"),
                       fast=fast, family=True)
    assert model.runtime == ("onnxruntime" if fast else "torch")
    torch.manual_seed(0)
    image = torch.rand(3, 36, 44) * 255
    vectors = model.style_vectors
    blend = vectors.blend((("fa", versions["fa"], 0.7), ("fc", versions["fc"], 0.3)))
    styles = [vectors.vector("fa", versions["fa"]), vectors.vector("fb", versions["fb"]), blend]
    outputs = model.forward_by_size([image, image, image], styles)
    with torch.inference_mode():
        for name, output in zip(("fa", "fb"), outputs):
            expected = registry.load_model(root, name)[0](image[None])[0]
            assert (output - expected).abs().max() < 0.05, name
        family = registry.read_family_metadata(root, "fam")
        family_net = registry.load_family_net(root, family["family"], family["architecture"])
        expected_blend = family_net(image[None], blend[None])[0]
    assert (outputs[2] - expected_blend).abs().max() < 0.05
    assert (outputs[0] - outputs[1]).abs().mean() > 1 and (outputs[2] - outputs[0]).abs().mean() > 0.1
    model.check_health()


def test_a_blend_is_the_weighted_sum_of_its_styles_vectors_whatever_the_weights_sum_to(family_registry):
    root, versions = family_registry
    family = registry.read_family_metadata(root, "fam")
    vectors = StyleVectors(root, family["family"], family["style_size"])
    fa, fb = vectors.vector("fa", versions["fa"]), vectors.vector("fb", versions["fb"])
    assert torch.allclose(vectors.blend((("fa", versions["fa"], 0.7), ("fb", versions["fb"], 0.3))), 0.7 * fa + 0.3 * fb)
    assert torch.allclose(vectors.blend((("fa", versions["fa"], 1.5), ("fb", versions["fb"], 1.0))), 1.5 * fa + fb)
    assert fa.shape == (family["style_size"],) and not torch.equal(fa, fb)


def test_a_style_of_another_family_version_is_never_mixed_in(family_registry, tmp_path):
    root, versions = family_registry
    old = registry.read_family_metadata(root, "fam")
    retrained = publish_random_family(tmp_path / "registry", ("fa",), seed=9, family="fam")  # a new family version
    vectors = StyleVectors(root, old["family"], old["style_size"])
    with pytest.raises(ValueError, match="is not a style of family 'fam' version"):
        vectors.vector("fa", retrained["fa"])
    assert vectors.vector("fb", versions["fb"]).shape == (old["style_size"],)  # its own styles still load


def test_the_vectors_a_replica_holds_are_bounded(family_registry):
    root, versions = family_registry
    family = registry.read_family_metadata(root, "fam")
    vectors = StyleVectors(root, family["family"], family["style_size"], capacity=2)
    for name in ("fa", "fb", "fc", "fa"):
        vectors.vector(name, versions[name])
    assert list(vectors.vectors) == [("fc", versions["fc"]), ("fa", versions["fa"])]


def test_a_blend_parameter_reads_as_style_weight_pairs():
    assert parse_blend("starry_night:0.7,the_scream:0.3") == (("starry_night", 0.7), ("the_scream", 0.3))
    assert parse_blend(" a:1.5 , b:-0.5") == (("a", 1.5), ("b", -0.5))
    assert parse_blend(None) == () and parse_blend("") == ()


@pytest.mark.parametrize("raw, says", [
    ("a:nan,b:0.5", "finite number"),
    ("a:inf", "finite number"),
    ("a:1e309", "finite number"),
    ("a:11", "between -10 and 10"),
    ("a:heavy", "must be a number"),
    ("a", "style:weight pairs"),
    ("a:0.5,a:0.5", "twice"),
    ("../etc:1", "invalid style name"),
    (",".join(f"s{i}:0.1" for i in range(MAX_BLEND_STYLES + 1)), f"at most {MAX_BLEND_STYLES}"),
])
def test_a_bad_blend_is_a_400_that_says_what_to_send(raw, says):
    with pytest.raises(HTTPError) as refused:
        parse_blend(raw)
    assert refused.value.status == 400 and says in refused.value.message
