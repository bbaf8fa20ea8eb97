"""Style families (factory/family.py): many styles in one network whose instance norms are conditional.
The network, a family's training step, its checkpoint, and the registry's family layout; no Ray. A
whole family run on Ray Train is in tests/test_training.py, a family served over HTTP in test_pool.py."""

import dataclasses

import pytest
import torch

from factory import registry
from factory.checkpoint_state import build_pack, checkpoint_bytes
from factory.family import FamilyStyle, StyleFamily, UndrawnStylesKept, image_styles, images_per_style
from factory.family_additions import find_additions
from factory.loss_network import LossNetwork
from factory.packs import check_families, family_hashes, plan_packs, recipe, resolve_style
from factory.settings import LossSettings, load_config
from factory.style_pack import PerceptualObjective, StepRunner, make_optimizer
from factory.transform_net import TransformNet
from factory.vgg_weights import random_vgg19
from factory_runs import STYLES, pack_plan
from serving import publish_random_family
from test_training_step import styles as resolved_styles

CPU = torch.device("cpu")


def test_a_style_is_only_its_norms_scales_and_shifts_the_output_convs_included():
    net = TransformNet(conditional=True, output_norm=True)
    inner = 2 * sum(m.num_features for m in TransformNet().modules() if isinstance(m, torch.nn.InstanceNorm2d))
    assert net.style_size == inner + 2 * 3  # Magenta's: the output conv normalised too, 3,206 numbers at full width
    assert TransformNet(conditional=True).style_size == inner  # families published before it: 3,200
    assert net.style_size / sum(p.numel() for p in net.parameters()) < 0.002  # beside 1.68M shared numbers
    assert TransformNet(conditional=True, output_norm=True, width=0.5).style_size == inner // 2 + 6
    with pytest.raises(ValueError, match="output_norm is a style family's"):
        TransformNet(output_norm=True)


def test_the_output_norm_gives_each_style_its_own_output_colour_balance():
    """Only the output norm's six numbers differ between two vectors: the pictures differ (the norm is
    used), and its shift moves the channel it belongs to."""
    torch.manual_seed(0)
    family = StyleFamily(["a", "b"]).eval()
    with torch.no_grad():
        family.style_vectors[1, -3] = 2.0  # the output norm's shift of the red channel (its scales, then its shifts)
    photos = torch.rand(1, 3, 32, 32) * 255
    with torch.inference_mode():
        a, b = family(photos, [0]), family(photos, [1])
    red, others = (b - a)[:, 0].mean(), (b - a)[:, 1:].abs().mean()
    assert red > 20 and others < 1e-3


def test_each_image_of_a_batch_carries_its_own_style():
    torch.manual_seed(0)
    family = StyleFamily(["a", "b", "c"]).eval()
    with torch.no_grad():
        family.style_vectors.add_(0.5 * torch.randn_like(family.style_vectors))
    photos = torch.rand(2, 3, 36, 28) * 255
    with torch.inference_mode():
        together = family(photos, [0, 2])  # photo 0 by style 0, photo 1 by style 2, in one pass
        alone = [FamilyStyle(family.net, family.style_vectors[index])(photos[place:place + 1]) for place, index in enumerate((0, 2))]
        swapped = family(photos, [2, 0])
    assert together.shape == (2, 3, 36, 28)
    assert torch.allclose(together[0], alone[0][0], atol=1e-3) and torch.allclose(together[1], alone[1][0], atol=1e-3)
    assert (together - swapped).abs().mean() > 1  # different vectors, different pictures


def test_a_network_is_refused_a_style_it_cannot_use():
    with pytest.raises(ValueError, match="needs a style vector"):
        TransformNet(conditional=True)(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="takes none"):
        TransformNet()(torch.rand(1, 3, 16, 16), torch.ones(1, 3200))


def test_every_style_gets_an_equal_share_of_each_pass_drawn_alike_on_every_worker_and_after_a_resume():
    run = image_styles(seed=0, first_image=0, count=300, family_size=4)  # the default run's 150 steps of 2 images, a family of 4
    assert [run.count(style) for style in range(4)] == [75] * 4  # per-step draws gave 27 / 38 / 44 / 41
    for images in range(1, 300):  # at any point of the run, at most one image apart
        counts = [run[:images].count(style) for style in range(4)]
        assert max(counts) - min(counts) <= 1
        assert counts == images_per_style(0, images, 4)
    assert len({tuple(run[start:start + 4]) for start in range(0, 300, 4)}) > 10  # each pass in its own order
    # A worker's share, or a run resumed at step 37, draws what the whole run draws there.
    assert image_styles(seed=0, first_image=37 * 2 + 1, count=1, family_size=4) == run[75:76]
    assert image_styles(seed=0, first_image=74, count=40, family_size=4) == run[74:114]
    assert image_styles(seed=1, first_image=0, count=300, family_size=4) != run


def family_runner(names=("starry_night", "the_scream", "udnie")) -> StepRunner:
    torch.manual_seed(0)
    family_styles = resolved_styles(names)
    settings = LossSettings(style_size=48, normalisation="per_layer", content_weight=3.0, style_weight=10.0, tv_weight=0.1)
    loss_network = LossNetwork(random_vgg19(seed=0).first(13), [settings.content_layer, *settings.style_layers])
    family = StyleFamily(list(names))
    objective = PerceptualObjective(loss_network, settings, family_styles, CPU)
    optimizer = make_optimizer(family, family_styles)
    return StepRunner(family, objective, optimizer, "fp32", "cpu", undrawn_kept=UndrawnStylesKept(optimizer, family.style_vectors))


def test_a_family_step_trains_the_shared_network_and_only_the_drawn_styles_vectors():
    runner = family_runner()
    before = {name: value.detach().clone() for name, value in runner.pack.state_dict().items()}
    losses = runner.step(torch.rand(2, 3, 32, 32) * 255, [1, 1], [1])
    after = runner.pack.state_dict()
    assert [float(losses[name]["images"]) for name in ("starry_night", "the_scream", "udnie")] == [0, 2, 0]
    assert torch.isfinite(losses["the_scream"]["total"]) and float(losses["the_scream"]["total"]) > 0
    assert not torch.equal(after["net.layers.0.0.1.weight"], before["net.layers.0.0.1.weight"])
    vectors_before, vectors_after = before["style_vectors"], after["style_vectors"]
    assert not torch.equal(vectors_after[1], vectors_before[1])
    assert torch.equal(vectors_after[0], vectors_before[0]) and torch.equal(vectors_after[2], vectors_before[2])


def test_each_styles_loss_is_the_mean_over_its_own_images():
    runner = family_runner()
    photos = torch.rand(3, 3, 32, 32) * 255
    with torch.no_grad():
        _, together = runner.objective(photos, runner.pack(photos, [0, 2, 0]), torch.tensor([0, 2, 0]))
        _, first = runner.objective(photos[:1], runner.pack(photos[:1], [0]), torch.tensor([0]))
        _, third = runner.objective(photos[2:], runner.pack(photos[2:], [0]), torch.tensor([0]))
    expected = (first["starry_night"]["total"] + third["starry_night"]["total"]) / 2
    assert torch.allclose(together["starry_night"]["total"], expected, rtol=1e-4)
    assert float(together["udnie"]["images"]) == 1 and float(together["the_scream"]["images"]) == 0


def test_styles_a_step_did_not_draw_stay_where_they_were_over_many_steps():
    """Style 2 drawn at the first step only: over the next 20 steps its vector and Adam's moments for it
    do not move at all. Plain Adam moves it on stale momentum (measured: 4.4e-3 over 20 steps), so the
    same steps without UndrawnStylesKept must move it, or this test could not tell."""
    photos = torch.rand(2, 3, 32, 32) * 255
    for keep in (True, False):
        runner = family_runner()
        if not keep:
            runner.undrawn_kept = None
        runner.step(photos, [2, 0], [0, 2])
        vector, moments = runner.pack.style_vectors[2].detach().clone(), {
            name: value[2].clone() for name, value in runner.optimizer.state[runner.pack.style_vectors].items() if value.dim() == 2}
        for step in range(20):
            runner.step(photos, [step % 2, 1 - step % 2], [0, 1])
        moved = (runner.pack.style_vectors[2].detach() - vector).abs().max().item()
        if keep:
            assert moved == 0.0
            state = runner.optimizer.state[runner.pack.style_vectors]
            assert all(torch.equal(state[name][2], value) for name, value in moments.items()) and moments
            assert (runner.pack.style_vectors[0].detach() - vector).abs().max() > 0  # the drawn ones did train
        else:
            assert moved > 1e-4


def test_a_family_learns_each_style_apart_from_the_others():
    """Steps that train both styles of a family: each style's own loss ends below the untrained family's,
    and the two styles' pictures come apart from the neutral start they shared. (With one style a step,
    the shared network leans toward the style of the last few steps; over a real run's thousands of
    steps that evens out: bench/families.py.)"""
    runner = family_runner(("starry_night", "the_scream"))
    torch.manual_seed(1)
    photos = torch.rand(4, 3, 32, 32) * 255

    every_photo_by_each = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])

    def losses() -> dict[str, float]:
        with torch.no_grad():
            _, parts = runner.objective(photos.repeat(2, 1, 1, 1), runner.pack(photos.repeat(2, 1, 1, 1), every_photo_by_each), every_photo_by_each)
        return {name: float(values["total"]) for name, values in parts.items()}

    untrained = losses()
    for step in range(60):  # each image its own style, two of each a step
        runner.step(photos, image_styles(0, step * 4, 4, 2), [0, 1])
    trained = losses()
    assert all(trained[name] < 0.8 * untrained[name] for name in untrained), (untrained, trained)
    with torch.inference_mode():
        pictures = runner.pack.eval()(photos[:1].repeat(2, 1, 1, 1), [0, 1])
    assert (pictures[0] - pictures[1]).abs().mean() > 2


def test_a_compiled_family_step_compiles_once_whatever_styles_it_draws():
    """Three static graphs (the family, the loss network twice) for every draw: were the drawn indices
    a list, dynamo would compile a graph per draw and, past its cache limit, stop compiling."""
    from test_training_step import CountingBackend

    runner = family_runner(("starry_night", "the_scream", "udnie"))
    backend = CountingBackend()
    runner.compile(backend)
    for draw in ([0, 1], [2, 2], [1, 0], [2, 1]):
        runner.step(torch.rand(2, 3, 32, 32) * 255, draw, sorted(set(draw)))
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
    for setting, value in (("steps", 7), ("learning_rate", 0.01), ("vector_learning_rate", 0.05), ("output_norm", False), ("width", 0.5)):
        config = load_config(None, [f"styles=[{base}, {{name: b, image: {STYLES / 'udnie.jpg'}, {setting}: {value}}}]",
                                    "training.pack_mode=family"])
        styles = [resolve_style(spec, config) for spec in config.styles]
        with pytest.raises(ValueError, match=f"styles of family 'factory' differ in {setting} .*b: {value}"):
            check_families(styles, config.training.batch_size)


def test_a_familys_vectors_learn_at_their_own_rate_when_given_one_and_at_the_networks_otherwise():
    plain = resolved_styles(("udnie", "the_scream"))
    family = StyleFamily(["udnie", "the_scream"])
    rates = [(group["lr"], sum(p.numel() for p in group["params"])) for group in make_optimizer(family, plain).param_groups]
    assert rates == [(1e-3, family.style_vectors.numel()), (1e-3, sum(p.numel() for p in family.net.parameters()))]
    fast = [dataclasses.replace(style, vector_learning_rate=0.03) for style in plain]
    assert [group["lr"] for group in make_optimizer(family, fast).param_groups] == [0.03, 1e-3]
    family.net.requires_grad_(False)  # a style joining a published family: its vector alone, at its own rate
    assert [group["lr"] for group in make_optimizer(family, fast).param_groups] == [0.03]


def test_a_family_without_the_output_norm_is_a_recipe_of_its_own_and_publishes_so(tmp_path):
    image = STYLES / "udnie.jpg"
    with_norm, without = (load_config(None, [f"styles=[{{name: a, image: {image}{extra}}}]", "training.pack_mode=family"])
                          for extra in ("", ", output_norm: false"))
    styles = [resolve_style(config.styles[0], config) for config in (with_norm, without)]
    assert [style.output_norm for style in styles] == [True, False]
    recipes = [recipe(style, config, "random") for style, config in zip(styles, (with_norm, without))]
    assert "output_norm" not in recipes[0]["style"] and recipes[1]["style"]["output_norm"] is False
    plan = dataclasses.replace(pack_plan(("a",)), family="fam", styles=(styles[1],))
    family, _, _ = build_pack(plan, CPU, False, None)
    assert family.net.output_norm is None and family.style_vectors.shape == (1, 3200)


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


def published_family_and_config(root, output_norm: bool = True):
    """Family fam published with a and b (their recipes as OWN_HASHES says), and a config of a, b and c."""
    config = joining_config(root)
    styles = [resolve_style(spec, config) for spec in config.styles]
    publish_random_family(root, ("a", "b"), recipe_hash=family_hashes(styles[:2], OWN_HASHES)["a"], output_norm=output_norm)
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
    runner.step(torch.rand(2, 3, 32, 32) * 255, [0, 0], [0])
    assert all(torch.equal(value, network_before[key]) for key, value in family.net.state_dict().items())
    assert not torch.equal(family.style_vectors[0], bases["fam"].initial_vector)


def test_a_family_too_short_to_train_each_of_its_styles_is_refused():
    image = STYLES / "udnie.jpg"
    specs = ", ".join(f"{{name: s{index}, image: {image}}}" for index in range(6))
    config = load_config(None, [f"styles=[{specs}]", "training.pack_mode=family", "training.steps=10"])
    styles = [resolve_style(spec, config) for spec in config.styles]
    with pytest.raises(ValueError, match="family 'factory' has 6 styles but 10 steps of 1 image.*fewer than two a style"):
        check_families(styles, 1)
    check_families(styles, 2)  # 20 images for 6 styles


def test_a_short_family_is_judged_by_its_images_not_its_steps():
    """A family of four with batch 4 trains every style twice in 2 steps (each image its own style)."""
    image = STYLES / "udnie.jpg"
    specs = ", ".join(f"{{name: s{index}, image: {image}}}" for index in range(4))
    config = load_config(None, [f"styles=[{specs}]", "training.pack_mode=family", "training.steps=2", "training.batch_size=4"])
    check_families([resolve_style(spec, config) for spec in config.styles], config.training.batch_size)
    assert images_per_style(0, 2 * 4, 4) == [2, 2, 2, 2]


def test_a_config_with_the_retired_per_step_setting_is_told_what_changed():
    with pytest.raises(ValueError, match="training.family_styles_per_step is no longer a setting: every image of a family's step"):
        load_config(None, [f"styles=[{{name: a, image: {STYLES / 'udnie.jpg'}}}]", "training.family_styles_per_step=2"])


def test_a_family_published_before_the_output_norm_still_loads_and_a_style_can_join_it(tmp_path):
    versions = publish_random_family(tmp_path, output_norm=False)
    style, metadata = registry.load_model(str(tmp_path), "a")
    assert style.net.output_norm is None and style.style_vector.shape == (3200,)
    with torch.inference_mode():
        assert style(torch.rand(1, 3, 24, 24) * 255).shape == (1, 3, 24, 24)
    config, styles = published_family_and_config(tmp_path / "old", output_norm=False)
    styles, bases = find_additions(config, styles, "random", OWN_HASHES)
    plan = dataclasses.replace(pack_plan(("c",)), family="fam", family_base=bases["fam"])
    family, _, _ = build_pack(plan, CPU, False, None)
    assert family.net.output_norm is None and family.style_vectors.shape == (1, 3200)
    assert versions["a"] == metadata["version"]
    with pytest.raises(ValueError, match=r"a style vector of \(3206,\) numbers does not fit its family's network, which takes \(3200,\)"):
        FamilyStyle(style.net, torch.ones(3206))
