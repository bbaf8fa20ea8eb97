"""Style families (factory/family.py): many styles in one network whose instance norms are conditional.
The network, a family's training step, its checkpoint, and the registry's family layout; no Ray. A
whole family run on Ray Train is in tests/test_training.py, a family served over HTTP in test_pool.py."""

import dataclasses

import pytest
import torch

from factory import registry
from factory.checkpoint_state import build_pack, checkpoint_bytes
from factory.family import FamilyStyle, StyleFamily, styles_for_step
from factory.family_additions import find_additions
from factory.loss_network import LossNetwork
from factory.packs import check_families, family_hashes, plan_packs, resolve_style
from factory.settings import LossSettings, load_config
from factory.style_pack import PerceptualObjective, StepRunner, make_optimizer
from factory.transform_net import TransformNet
from factory.vgg_weights import random_vgg19
from factory_runs import STYLES, pack_plan
from serving import publish_random_family
from test_training_step import styles as resolved_styles

CPU = torch.device("cpu")


def test_a_style_is_only_its_norms_scales_and_shifts():
    net = TransformNet(conditional=True)
    assert net.style_size == 2 * sum(m.num_features for m in TransformNet().modules() if isinstance(m, torch.nn.InstanceNorm2d))
    assert net.style_size / sum(p.numel() for p in net.parameters()) < 0.002  # 3,200 numbers beside 1.68M shared
    assert TransformNet(conditional=True, width=0.5).style_size == net.style_size // 2


def test_each_image_of_a_batch_can_carry_its_own_style():
    torch.manual_seed(0)
    family = StyleFamily(["a", "b", "c"]).eval()
    with torch.no_grad():
        family.style_vectors.add_(0.5 * torch.randn_like(family.style_vectors))
    photos = torch.rand(2, 3, 36, 28) * 255
    with torch.inference_mode():
        together = family(photos, [0, 2])  # (2 styles, 2 photos, ...), one pass
        alone = [FamilyStyle(family.net, family.style_vectors[index])(photos) for index in (0, 2)]
    assert together.shape == (2, 2, 3, 36, 28)
    assert torch.allclose(together[0], alone[0], atol=1e-3) and torch.allclose(together[1], alone[1], atol=1e-3)
    assert (alone[0] - alone[1]).abs().mean() > 1  # different vectors, different pictures


def test_a_network_is_refused_a_style_it_cannot_use():
    with pytest.raises(ValueError, match="needs a style vector"):
        TransformNet(conditional=True)(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="takes none"):
        TransformNet()(torch.rand(1, 3, 16, 16), torch.ones(1, 3200))


def test_each_step_draws_the_same_styles_on_every_worker_and_after_a_resume():
    draws = [styles_for_step(seed=5, step=step, family_size=6, per_step=2) for step in range(200)]
    assert draws == [styles_for_step(seed=5, step=step, family_size=6, per_step=2) for step in range(200)]
    assert all(len(set(draw)) == 2 and draw == sorted(draw) for draw in draws)
    assert {index for draw in draws for index in draw} == set(range(6))  # every style gets trained
    assert len({tuple(draw) for draw in draws}) > 5
    assert draws != [styles_for_step(seed=6, step=step, family_size=6, per_step=2) for step in range(200)]
    assert styles_for_step(seed=5, step=3, family_size=2, per_step=4) == [0, 1]


def family_runner(names=("starry_night", "the_scream", "udnie")) -> StepRunner:
    torch.manual_seed(0)
    family_styles = resolved_styles(names)
    settings = LossSettings(style_size=48, normalisation="per_layer", content_weight=3.0, style_weight=10.0, tv_weight=0.1)
    loss_network = LossNetwork(random_vgg19(seed=0).first(13), [settings.content_layer, *settings.style_layers])
    family = StyleFamily(list(names))
    objective = PerceptualObjective(loss_network, settings, family_styles, CPU)
    return StepRunner(family, objective, make_optimizer(family, family_styles), "fp32", "cpu")


def test_a_family_step_trains_the_shared_network_and_only_the_drawn_styles_vectors():
    runner = family_runner()
    before = {name: value.detach().clone() for name, value in runner.pack.state_dict().items()}
    losses = runner.step(torch.rand(2, 3, 32, 32) * 255, [1])
    after = runner.pack.state_dict()
    assert set(losses) == {"the_scream"} and torch.isfinite(losses["the_scream"]["total"])
    assert not torch.equal(after["net.layers.0.0.1.weight"], before["net.layers.0.0.1.weight"])
    vectors_before, vectors_after = before["style_vectors"], after["style_vectors"]
    assert not torch.equal(vectors_after[1], vectors_before[1])
    assert torch.equal(vectors_after[0], vectors_before[0]) and torch.equal(vectors_after[2], vectors_before[2])


def test_a_family_learns_each_style_apart_from_the_others():
    """Steps that train both styles of a family: each style's own loss ends below the untrained family's,
    and the two styles' pictures come apart from the neutral start they shared. (With one style a step,
    the shared network leans toward the style of the last few steps; over a real run's thousands of
    steps that evens out: bench/families.py.)"""
    runner = family_runner(("starry_night", "the_scream"))
    torch.manual_seed(1)
    photos = torch.rand(4, 3, 32, 32) * 255

    def losses() -> dict[str, float]:
        with torch.no_grad():
            _, parts = runner.objective(photos, runner.pack(photos, [0, 1]), [0, 1])
        return {name: float(values["total"]) for name, values in parts.items()}

    untrained = losses()
    for _ in range(60):  # measured: 4.5 -> 3.25 and 4.8 -> 2.1 (a network per style: 4.5 -> 3.2 in 30)
        runner.step(photos, [0, 1])
    trained = losses()
    assert all(trained[name] < 0.8 * untrained[name] for name in untrained), (untrained, trained)
    with torch.inference_mode():
        pictures = runner.pack.eval()(photos[:1], [0, 1])
    assert (pictures[0] - pictures[1]).abs().mean() > 2


def test_a_compiled_family_step_compiles_once_whatever_styles_it_draws():
    """Three static graphs (the family, the loss network twice) for every draw: were the drawn indices
    a list, dynamo would compile a graph per draw and, past its cache limit, stop compiling."""
    from test_training_step import CountingBackend

    runner = family_runner(("starry_night", "the_scream", "udnie"))
    backend = CountingBackend()
    runner.compile(backend)
    for draw in ([0], [1], [2], [1]):
        runner.step(torch.rand(2, 3, 32, 32) * 255, draw)
    assert backend.graphs == 3 and backend.symbolic == 0


def test_a_familys_checkpoint_resumes_the_network_vectors_and_adam():
    plan = dataclasses.replace(pack_plan(("a", "b")), family="fam")
    family, optimizer, progress = build_pack(plan, CPU, False, None)
    assert isinstance(family, StyleFamily)
    with torch.no_grad():
        family.style_vectors.add_(torch.randn_like(family.style_vectors))
    state = torch.load(__import__("io").BytesIO(checkpoint_bytes(family, optimizer, progress, torch.amp.GradScaler("cpu", enabled=False))),
                       weights_only=True)
    assert "family" in state and "nets" not in state
    resumed, _, _ = build_pack(plan, CPU, False, state)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), family.state_dict().values()))


def test_a_familys_styles_must_agree_on_steps_learning_rate_and_width():
    base = f"{{name: a, image: {STYLES / 'udnie.jpg'}}}"
    for setting, value in (("steps", 7), ("learning_rate", 0.01), ("width", 0.5)):
        config = load_config(None, [f"styles=[{base}, {{name: b, image: {STYLES / 'udnie.jpg'}, {setting}: {value}}}]",
                                    "training.pack_mode=family"])
        styles = [resolve_style(spec, config) for spec in config.styles]
        with pytest.raises(ValueError, match=f"styles of family 'factory' differ in {setting} .*b: {value}"):
            check_families(styles)


def test_a_family_is_one_pack_whatever_its_size_and_a_change_to_one_member_retrains_all():
    image = STYLES / "udnie.jpg"
    specs = ", ".join(f"{{name: s{index}, image: {image}, family: {'art' if index < 5 else 'other'}}}" for index in range(6))
    config = load_config(None, [f"styles=[{specs}, {{name: solo, image: {image}}}]", "training.styles_per_pack=2"])
    styles = [resolve_style(spec, config) for spec in config.styles]
    hashes = family_hashes(styles, {style.name: style.name for style in styles})
    plans = plan_packs(config, styles, hashes)
    assert sorted((plan.family, len(plan.styles)) for plan in plans) == [("", 1), ("art", 5), ("other", 1)]
    assert len({hashes[f"s{index}"] for index in range(5)}) == 1 and hashes["solo"] == "solo"
    changed = family_hashes(styles, {style.name: style.name + ("x" if style.name == "s0" else "") for style in styles})
    assert changed["s4"] != hashes["s4"] and changed["s5"] == hashes["s5"]


def test_a_familys_styles_load_from_the_registry_sharing_one_network(tmp_path):
    publish_random_family(tmp_path)
    assert registry.list_styles(str(tmp_path)) == ["a", "b"]  # the family's folder is not a style
    (a, a_meta), (b, _) = registry.load_model(str(tmp_path), "a"), registry.load_model(str(tmp_path), "b")
    assert isinstance(a, FamilyStyle) and a.net is b.net  # one network in memory for the family
    assert (tmp_path / "a" / "versions" / a_meta["version"] / "model.pt").stat().st_size < 20_000
    photos = torch.rand(2, 3, 40, 36) * 255
    with torch.inference_mode():
        torch_a, torch_b = a(photos), b(photos)
        onnx_a = registry.load_onnx_net(str(tmp_path), a_meta)(photos)
    assert (torch_a - torch_b).abs().mean() > 1
    assert (onnx_a - torch_a).abs().max() < 0.05


def test_a_family_version_whose_files_changed_is_refused(tmp_path):
    versions = publish_random_family(tmp_path)
    metadata = registry.read_metadata(str(tmp_path), "a", versions["a"])
    family_model = tmp_path / "_families" / "fam" / "versions" / metadata["family"]["version"] / "model.pt"
    family_model.write_bytes(family_model.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="does not match its recorded sha256"):
        registry.load_net(str(tmp_path), metadata)


def joining_config(root, *extra: str):
    image = STYLES / "udnie.jpg"
    styles = ", ".join(f"{{name: {name}, image: {image}, family: fam}}" for name in ("a", "b", "c"))
    return load_config(None, [f"styles=[{styles}]", f"registry={root}", *extra])


OWN_HASHES = {"a": "recipe-a", "b": "recipe-b", "c": "recipe-c"}


def published_family_and_config(root):
    """Family fam published with a and b (their recipes as OWN_HASHES says), and a config of a, b and c."""
    config = joining_config(root)
    styles = [resolve_style(spec, config) for spec in config.styles]
    publish_random_family(root, ("a", "b"), recipe_hash=family_hashes(styles[:2], OWN_HASHES)["a"])
    return config, styles


def test_a_style_naming_a_published_family_joins_it_starting_from_its_styles_mean_vector(tmp_path):
    config, styles = published_family_and_config(tmp_path)
    styles, bases = find_additions(config, styles, "random", OWN_HASHES)
    family = registry.read_family_metadata(str(tmp_path), "fam")
    assert [style.adds_to for style in styles] == ["", "", family["family"]["version"]]
    base = bases["fam"]
    assert base.reference == family["family"]
    members = [registry.load_model(str(tmp_path), name)[0].style_vector for name in ("a", "b")]
    assert torch.allclose(base.initial_vector, (members[0] + members[1]) / 2)
    # The members train as before (their own pack, their family hash); the addition in a pack of its own.
    hashes = family_hashes(styles, OWN_HASHES)
    plans = plan_packs(config, styles, hashes, family_bases=bases)
    assert sorted((plan.style_names, plan.family_base is not None) for plan in plans) == [(["a", "b"], False), (["c"], True)]


def test_a_new_style_trains_with_its_family_when_the_family_trains_again_anyway(tmp_path):
    """--retrain, or a member whose recipe changed: the family gets a new version, and a new style
    trained against the version being replaced would be trained again on the next run."""
    config, styles = published_family_and_config(tmp_path)
    retrained, _ = find_additions(config, styles, "random", OWN_HASHES, retrain=True)
    changed, _ = find_additions(config, styles, "random", {**OWN_HASHES, "a": "recipe-a-heavier"})
    assert [style.adds_to for style in retrained] == [style.adds_to for style in changed] == ["", "", ""]


def test_joining_a_family_trained_with_another_loss_network_stops_before_training(tmp_path):
    config, styles = published_family_and_config(tmp_path)
    with pytest.raises(ValueError, match=r"c would join family 'fam' version .* trained with loss network 'random', but this run's is 'torchvision:"):
        find_additions(config, styles, "torchvision:vgg19", OWN_HASHES)


def test_joining_a_family_version_that_no_longer_exists_stops_before_training(tmp_path):
    config, styles = published_family_and_config(tmp_path)
    version = registry.read_family_metadata(str(tmp_path), "fam")["family"]["version"]
    (tmp_path / "_families" / "fam" / "versions" / version / "metadata.json").unlink()
    with pytest.raises(ValueError, match=r"would join its published version, which cannot be read"):
        find_additions(config, styles, "random", OWN_HASHES)


def test_a_joining_style_trains_only_its_vector_against_the_frozen_family(tmp_path):
    config, styles = published_family_and_config(tmp_path)
    styles, bases = find_additions(config, styles, "random", OWN_HASHES)
    plan = dataclasses.replace(pack_plan(("c",)), family="fam", family_base=bases["fam"])
    family, optimizer, _ = build_pack(plan, CPU, False, None)
    assert torch.equal(family.style_vectors[0], bases["fam"].initial_vector)
    settings = LossSettings(style_size=48, normalisation="per_layer", content_weight=3.0, style_weight=10.0, tv_weight=0.1)
    loss_network = LossNetwork(random_vgg19(seed=0).first(13), [settings.content_layer, *settings.style_layers])
    runner = StepRunner(family, PerceptualObjective(loss_network, settings, resolved_styles(("udnie",)), CPU), optimizer, "fp32", "cpu")
    network_before = {key: value.clone() for key, value in family.net.state_dict().items()}
    runner.step(torch.rand(2, 3, 32, 32) * 255, [0])
    assert all(torch.equal(value, network_before[key]) for key, value in family.net.state_dict().items())
    assert not torch.equal(family.style_vectors[0], bases["fam"].initial_vector)


def test_a_family_too_short_to_train_each_of_its_styles_is_refused():
    image = STYLES / "udnie.jpg"
    specs = ", ".join(f"{{name: s{index}, image: {image}}}" for index in range(6))
    config = load_config(None, [f"styles=[{specs}]", "training.pack_mode=family", "training.steps=10"])
    styles = [resolve_style(spec, config) for spec in config.styles]
    with pytest.raises(ValueError, match="family 'factory' has 6 styles but 10 steps of 1 style"):
        check_families(styles, 1)
    check_families(styles, 2)  # 20 draws for 6 styles
