"""Turning a config's styles into packs: the unit one Ray Train run trains.

A pack shares one content stream, so its styles must agree on what that stream is (steps); weights
and learning rates may differ per style. Each style's recipe is hashed: a pack's run name comes from
its styles' recipes, so rerunning the same command finds the same checkpoints and resumes them, and
a style already published with the same recipe is not trained again.
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
        steps=pick(spec.steps, config.training.steps),
        learning_rate=pick(spec.learning_rate, config.training.learning_rate),
    )


def recipe(style: ResolvedStyle, config: FactoryConfig, loss_network_source: str) -> dict:
    """What determines a style's trained weights: equal recipes give interchangeable models."""
    training = dataclasses.asdict(config.training)
    for irrelevant in ("num_workers", "accelerator", "cpus_per_worker", "styles_per_pack", "max_concurrent_packs",
                       "compile", "channels_last", "checkpoint_every", "log_every", "storage_path", "max_failures", "worker_resources"):
        training.pop(irrelevant)
    style_fields = {key: value for key, value in dataclasses.asdict(style).items() if key != "image_bytes"}
    return {
        "style": style_fields,
        "loss": dataclasses.asdict(config.loss),
        "training": training,
        "data": {"source": config.data.source, "image_size": config.data.image_size},
        "loss_network": loss_network_source,
    }


def recipe_hash(recipe_dict: dict) -> str:
    return hashlib.sha256(json.dumps(recipe_dict, sort_keys=True, default=str).encode()).hexdigest()


def plan_packs(config: FactoryConfig, styles: list[ResolvedStyle], recipe_hashes: dict[str, str]) -> list[PackPlan]:
    """Group styles with equal step counts, config order kept, at most styles_per_pack to a pack."""
    by_steps: dict[int, list[ResolvedStyle]] = {}
    for style in styles:
        by_steps.setdefault(style.steps, []).append(style)
    plans = []
    size = config.training.styles_per_pack
    for steps, group in by_steps.items():
        for start in range(0, len(group), size):
            members = tuple(group[start:start + size])
            pack_id = hashlib.sha256("".join(recipe_hashes[style.name] for style in members).encode()).hexdigest()[:10]
            run_name = f"{config.name}-{'-'.join(style.name for style in members)[:60]}-{pack_id}"
            plans.append(PackPlan(
                run_name=run_name,
                styles=members,
                steps=steps,
                data=config.data,
                loss=config.loss,
                training=config.training,
                tensorboard_uri=storage.join(storage.absolute(config.training.storage_path), run_name, "tensorboard"),
            ))
    return plans
