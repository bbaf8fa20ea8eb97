"""Turning a config's styles into packs: the unit one Ray Train run trains.

A pack shares one content stream, so its styles must agree on what that stream is (steps); weights
and learning rates may differ per style. Each style's recipe is hashed: a pack's run name comes from
its styles' recipes and the versions they replace in the registry, so rerunning the same command finds
the same checkpoints and resumes them, a style already published with the same recipe is not trained
again, and a retrain (--retrain) of a published style is a new run that trains from step 0 rather than
the finished run of the version it replaces.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from factory import storage
from factory.settings import FactoryConfig, LossSettings, ResolvedStyle, StyleSpec, TrainingSettings, DataSettings


@dataclass(frozen=True)
class PackPlan:
    """Everything a pack's workers need, small enough to ship in train_loop_config."""

    run_name: str
    styles: tuple[ResolvedStyle, ...]
    steps: int
    data: DataSettings
    loss: LossSettings
    training: TrainingSettings
    # Where rank 0 writes TensorBoard event files (folder or s3:// prefix).
    tensorboard_uri: str
    # The style family this pack trains as one network (factory/family.py); "" for a network per style.
    family: str = ""
    # For styles joining a published family: its frozen network and their starting vector
    # (factory/family_additions.FamilyBase); None otherwise.
    family_base: object = None

    @property
    def style_names(self) -> list[str]:
        return [style.name for style in self.styles]


def resolve_style(spec: StyleSpec, config: FactoryConfig) -> ResolvedStyle:
    """Read the style image and fill every per-style setting from the style or the global default."""
    try:
        image_bytes = storage.read_bytes(spec.image)
    except FileNotFoundError:
        raise FileNotFoundError(f"style {spec.name!r}: no image at {spec.image!r}; fix styles[].image in the config") from None

    def pick(value, default):
        return default if value is None else value

    return ResolvedStyle(
        name=spec.name,
        image_bytes=image_bytes,
        image_sha256=hashlib.sha256(image_bytes).hexdigest(),
        content_weight=pick(spec.content_weight, config.loss.content_weight),
        style_weight=pick(spec.style_weight, config.loss.style_weight),
        tv_weight=pick(spec.tv_weight, config.loss.tv_weight),
        stability_weight=pick(spec.stability_weight, config.loss.stability_weight),
        steps=pick(spec.steps, config.training.steps),
        learning_rate=pick(spec.learning_rate, config.training.learning_rate),
        vector_learning_rate=spec.vector_learning_rate,
        output_norm=spec.output_norm is not False,
        width=pick(spec.width, config.model.width),
        family=family_of(spec, config),
    )


def family_of(spec: StyleSpec, config: FactoryConfig) -> str:
    """The style family a style belongs to: its own setting, the config's name under pack_mode family, or
    "" for a network of its own."""
    return spec.family or (config.name if config.training.pack_mode == "family" else "")


def recipe(style: ResolvedStyle, config: FactoryConfig, loss_network_source: str) -> dict:
    """What determines a style's trained weights: equal recipes give interchangeable models."""
    training = dataclasses.asdict(config.training)
    for irrelevant in ("num_workers", "accelerator", "cpus_per_worker", "styles_per_pack", "max_concurrent_packs",
                       "compile", "channels_last", "checkpoint_every", "log_every", "storage_path", "max_failures", "worker_resources",
                       "waiting_log_s", "start_deadline_s", "pack_mode"):
        training.pop(irrelevant)
    if style.family:  # how a family trains; a family's own recipe (family_hashes) also holds its members'
        training["family_method"] = FAMILY_METHOD
    style_fields = {key: value for key, value in dataclasses.asdict(style).items() if key != "image_bytes"}
    # Settings that came after the first catalogue was published are left out at their defaults: a
    # full-width style of its own hashes as before, so upgrading does not retrain a whole catalogue.
    if style_fields["width"] == 1.0:
        del style_fields["width"]
    for later in ("family", "adds_to", "vector_learning_rate", "stability_weight"):
        if not style_fields[later]:
            del style_fields[later]
    if style_fields.pop("output_norm") is False and style.family:  # a family's architecture: only a family records it
        style_fields["output_norm"] = False
    loss = dataclasses.asdict(config.loss)
    del loss["stability_weight"]  # the style's own, resolved, is in style_fields
    if not style.stability_weight:  # off: the noise changes nothing, and the recipe hashes as before it existed
        del loss["stability_noise"]
    return {
        "style": style_fields,
        "loss": loss,
        "training": training,
        "data": {"source": config.data.source, "image_size": config.data.image_size},
        "loss_network": loss_network_source,
    }


# How a family trains, in its recipe: a change of method is a new recipe, and its families train again.
# "per-image-draws+output-norm": every image its own style, equal shares each pass, undrawn vectors
# left alone, the output conv normalised unless the styles say output_norm: false (then in their
# recipe too); before it, one style a step, unnormalised.
FAMILY_METHOD = "per-image-draws+output-norm"


def recipe_hash(recipe_dict: dict) -> str:
    return hashlib.sha256(json.dumps(recipe_dict, sort_keys=True, default=str).encode()).hexdigest()


def families(styles: list[ResolvedStyle]) -> dict[str, list[ResolvedStyle]]:
    """{family: its styles, config order} for the styles that train a family's network together (not
    those joining a published one: factory/family_additions.py)."""
    grouped: dict[str, list[ResolvedStyle]] = {}
    for style in styles:
        if style.family and not style.adds_to:
            grouped.setdefault(style.family, []).append(style)
    return grouped


def check_families(styles: list[ResolvedStyle], batch_size: int) -> None:
    """A family is one network trained in one run: its styles must agree on what that run is, and the
    run must have room to train each of them: every image carries one style, each style once in each
    pass over the styles (factory/family.py), so a style trains on steps * batch_size / S images."""
    for family, members in families(styles).items():
        images = members[0].steps * batch_size
        if images < 2 * len(members):
            raise ValueError(f"family {family!r} has {len(members)} styles but {members[0].steps} steps of {batch_size} image(s): "
                             f"{images} images in all, fewer than two a style, so some styles would hardly be trained, if at all. "
                             "Raise training.steps (a family's steps are for all its styles) or training.batch_size")
        for setting in ("steps", "learning_rate", "vector_learning_rate", "output_norm", "width"):
            values = {style.name: getattr(style, setting) for style in members}
            if len(set(values.values())) > 1:
                listed = ", ".join(f"{name}: {value}" for name, value in values.items())
                raise ValueError(f"the styles of family {family!r} differ in {setting} ({listed}); a family is one network "
                                 f"trained in one run: give them one {setting}, or put a style in a family of its own (styles[].family). "
                                 f"A style that joined the published family with a {setting} of its own trains as a member when the "
                                 f"family trains again (--retrain, or a member's recipe changed): drop its own {setting} for that run")


def family_hashes(styles: list[ResolvedStyle], hashes: dict[str, str]) -> dict[str, str]:
    """Each style's recipe hash, a family's members all given the family's: a change to any member's
    recipe (or a style joining or leaving) makes a new model of every style in it."""
    hashes = dict(hashes)
    for family, members in families(styles).items():
        family_hash = recipe_hash({"family": family, "members": {style.name: hashes[style.name] for style in members}})
        hashes.update({style.name: family_hash for style in members})
    return hashes


def plan_packs(config: FactoryConfig, styles: list[ResolvedStyle], recipe_hashes: dict[str, str],
               replaces: dict[str, str] | None = None, family_bases: dict | None = None) -> list[PackPlan]:
    """Group styles with equal step counts, config order kept, at most styles_per_pack to a pack; each
    style family (check_families) is one pack of all its styles, whatever styles_per_pack says. Styles
    trained with the stability loss pack apart from those without: its noisy pass runs for a whole pack.

    replaces: {style: the registry's current version} for styles already published. It is part of the
    run name: the run that trained that version finished, and resuming it would publish its weights
    again; a run interrupted before publishing is still found (the registry has not moved on). Such a
    pack also trains with a seed of its own: the config's seed would draw the same model again.
    """
    replaces = replaces or {}
    by_steps: dict[tuple, list[ResolvedStyle]] = {}
    for style in styles:
        if not style.family:
            by_steps.setdefault((style.steps, style.stability_weight > 0), []).append(style)
    joining: dict[tuple, list[ResolvedStyle]] = {}
    for style in styles:
        if style.adds_to:  # their own vectors, one pack per family and per run length and learning rate
            joining.setdefault((style.family, style.steps, style.learning_rate, style.vector_learning_rate, style.stability_weight > 0),
                               []).append(style)
    size = config.training.styles_per_pack
    groups = [("", tuple(group[start:start + size])) for group in by_steps.values() for start in range(0, len(group), size)]
    groups += [(family, tuple(members)) for family, members in families(styles).items()]  # a family is one pack, whole
    groups += [(key[0], tuple(members[start:start + size])) for key, members in joining.items() for start in range(0, len(members), size)]
    plans = []
    for family, members in groups:
        base = (family_bases or {}).get(family) if members[0].adds_to else None
        steps = members[0].steps
        identity = "".join(recipe_hashes[style.name] + replaces.get(style.name, "") for style in members)
        pack_id = hashlib.sha256(identity.encode()).hexdigest()[:10]
        label = f"family-{family}" if family else "-".join(style.name for style in members)
        if base is not None:
            label = f"{family}-adds-{'-'.join(style.name for style in members)}"
        run_name = f"{config.name}-{label[:60]}-{pack_id}"
        training = config.training
        if any(style.name in replaces for style in members):
            # A new model of a published style is a new draw: its own initial weights and data order
            # (the same seed would give the same weights bit for bit on a CPU), as stable as the run name.
            training = dataclasses.replace(training, seed=int(hashlib.sha256(f"{training.seed}:{identity}".encode()).hexdigest()[:8], 16))
        plans.append(PackPlan(
            run_name=run_name,
            styles=members,
            steps=steps,
            data=config.data,
            loss=config.loss,
            training=training,
            tensorboard_uri=storage.join(storage.absolute(config.training.storage_path), run_name, "tensorboard"),
            family=family,
            family_base=base,
        ))
    return plans
