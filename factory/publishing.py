"""What a finished pack becomes: each style's model, preview, quality figures and metadata published to
the registry, the run's contact sheet, and the final table. No Ray here but the result it is handed.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from factory import contact_sheet, images, onnx_int8, onnx_model, quality, registry, storage
from factory.packs import PackPlan, recipe
from factory.settings import FactoryConfig, ResolvedStyle
from factory.checkpoint_state import CHECKPOINT_FILE, new_family
from factory.family import FamilyStyle, StyleFamily, images_per_style
from factory.held_out import HeldOutPhotos
from factory.transform_net import TransformNet
from factory.vgg_weights import VGGWeights

THUMBNAIL_MAX_SIDE = 256
logger = logging.getLogger("factory")


@dataclass
class Outcome:
    style: str
    status: str  # "published", "already published", "failed"
    steps: int = 0
    loss: float | None = None
    images_per_second: float | None = None
    version: str = ""
    detail: str = ""
    # factory/quality.py's figures, the mean over the held-out evaluation photos: colour_shift, structure_kept.
    quality: dict = dataclasses.field(default_factory=dict)


def published_metadata(config: FactoryConfig, styles: list[ResolvedStyle]) -> dict[str, dict]:
    """{style: metadata of its current version} for the config's styles already in the registry."""
    found = set(registry.list_styles(config.registry))
    return {style.name: registry.read_metadata(config.registry, style.name) for style in styles if style.name in found}


def trained_net(state_dict: dict, width: float = 1.0) -> TransformNet:
    net = TransformNet(width=width)
    net.load_state_dict(state_dict)
    return net.eval()


def architecture(style: ResolvedStyle, output_norm: bool = True) -> dict:
    """output_norm: whether a family's output conv has its conditional norm (families published before it did not)."""
    if style.family:
        return {"name": "dumoulin2017-conditional-instancenorm", "upsample": "nearest", "width": style.width, "family": style.family,
                "output_norm": output_norm}
    return {"name": "johnson2016-instancenorm", "upsample": "nearest", "width": style.width}


def trained_family(state: dict, plan: PackPlan) -> StyleFamily:
    family = new_family(plan)
    family.load_state_dict(state["family"])
    return family.eval()


def held_out_figures(net, photos: HeldOutPhotos, style_image) -> dict:
    """factory/quality.py's figures on every evaluation photo: their mean, and each photo's own."""
    per_photo = {name: quality.figures(stylise_preview(net, photo), photo, style_image) for name, photo in photos.evaluation.items()}
    means = {key: round(sum(figures[key] for figures in per_photo.values()) / len(per_photo), 4) for key in ("colour_shift", "structure_kept")}
    return {**means, "photos": per_photo}


def int8_copy(export: bytes, calibration: list, photos: HeldOutPhotos, style_image, figures: dict,
              width: float = 1.0) -> tuple[bytes | None, dict]:
    """(the export's int8 copy, or None where its figures moved too much; what was found, for the metadata).
    figures: the fp32 network's held_out_figures, which the int8 copy's on the same photos must stay
    within onnx_int8.INT8_TOLERANCE of (relative), each of them. No copy at a width where int8 was
    measured slower than fp32 (onnx_int8.INT8_WIDTHS)."""
    if width not in onnx_int8.INT8_WIDTHS:
        return None, {"published": False, "reason": f"width {width:g}: int8 runs no faster than fp32 there (bench/int8.py)"}
    if not calibration:
        return None, {"published": False, "reason": "no content photo to calibrate on"}
    try:
        quantised = onnx_int8.quantise(export, calibration)
        int8_figures = held_out_figures(onnx_model.OnnxTransformNet(quantised, precision="int8"), photos, style_image)
    except Exception as error:  # the fp32 model is what was trained: it is published whatever befalls its copy
        logger.warning("no int8 copy: %s", error)
        return None, {"published": False, "reason": f"quantisation failed: {error}"}
    change = {key: round(onnx_int8.relative_change(figures[key], int8_figures[key]), 4) for key in ("colour_shift", "structure_kept")}
    within = max(change.values()) <= onnx_int8.INT8_TOLERANCE
    # The check ran on this machine's kernels: where a core has no int8 units, ONNX Runtime computes int8 otherwise.
    check = {"published": within, "colour_shift": int8_figures["colour_shift"], "structure_kept": int8_figures["structure_kept"],
             "relative_change": change, "tolerance": onnx_int8.INT8_TOLERANCE, "calibration_photos": len(calibration),
             "checked_on_int8_units": onnx_int8.cpu_has_int8_units()}
    return (quantised if within else None), check


def publish_family(config: FactoryConfig, plan: PackPlan, net: TransformNet, state: dict, weights: VGGWeights, hashes: dict) -> dict:
    """A finished family's shared network, published once for all its styles; returns what its styles'
    metadata records of it."""
    metadata = {
        "styles": plan.style_names,
        "architecture": architecture(plan.styles[0], net.output_norm is not None),
        "style_size": net.style_size,
        "loss_network": {"source": weights.source, "random_weights": weights.is_random},
        "recipe_hash": hashes[plan.styles[0].name],  # the family's: every member's is the same (packs.family_hashes)
        "steps": state["progress"]["step"],
        "style_draws": "per image, every style once in each pass over the styles (factory/family.py)",
        "run_name": plan.run_name,
        "seed": plan.training.seed,
    }
    reference = registry.publish_family(config.registry, plan.family, net.state_dict(), metadata, onnx_model.export(net))
    logger.info("published style family %s version %s (%d styles) to %s", plan.family, reference["version"], len(plan.styles), config.registry)
    return reference


def stylise_preview(net: TransformNet, photo: "images.Image.Image") -> "images.Image.Image":
    with torch.inference_mode():
        output = net(images.to_tensor(photo).unsqueeze(0))[0]
    return images.to_image(output)


def publish_pack(config: FactoryConfig, plan: PackPlan, result, weights: VGGWeights, hashes: dict, photos: HeldOutPhotos,
                 calibration: list | None = None) -> list[Outcome]:
    """Every style of a finished pack, published from the run's last checkpoint. calibration: content
    photos (onnx_int8.calibration_batch's) for each own-network style's int8 copy; none: no int8 copies."""
    metrics = result.metrics or {}
    if metrics.get("stopped"):  # the workers stopped the run (a loss that went NaN): nothing to publish
        raise RuntimeError(metrics["stopped"])
    with result.checkpoint.as_directory() as directory:
        state = torch.load(Path(directory, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
    progress = state["progress"]
    train_seconds = max(float(progress["train_seconds"]), 1e-9)
    photos_trained = progress["step"] * config.training.batch_size
    # A separate network sees every photo of every step; a family's style, the images drawn for it.
    images_trained = (images_per_style(plan.training.seed, photos_trained, len(plan.styles)) if plan.family
                      else [photos_trained] * len(plan.styles))
    trained, family = None, None
    if plan.family:
        trained = trained_family(state, plan)
        # Styles joining a published family point at that version, untouched; a family trained here is published first.
        family = plan.family_base.reference if plan.family_base is not None else publish_family(config, plan, trained.net, state, weights, hashes)
    outcomes = []
    for index, style in enumerate(plan.styles):
        losses = metrics.get("losses", {}).get(style.name, {})
        style_image = images.decode_rgb(style.image_bytes, max_pixels=images.CONFIG_IMAGE_MAX_PIXELS)
        if trained is not None:  # a family's style: its vector, run through the family's network
            model_state = {"style_vector": trained.style_vectors[index].detach()}
            net = FamilyStyle(trained.net, model_state["style_vector"]).eval()
        else:
            model_state = state["nets"][style.name]
            net = trained_net(model_state, style.width)
        preview = stylise_preview(net, photos.preview)
        figures = held_out_figures(net, photos, style_image)
        images_per_second = images_trained[index] / train_seconds
        metadata = {
            "style_image_sha256": style.image_sha256,
            "loss_network": {"source": weights.source, "random_weights": weights.is_random},
            "recipe_hash": hashes[style.name],
            "recipe": recipe(style, config, weights.source),
            "steps": progress["step"],
            "final_losses": losses,
            "loss_history": progress["loss_history"].get(style.name, []),
            "resumed_at_steps": progress["resumed_at_steps"],
            "throughput": {"images_per_second_per_style": images_per_second, "images_trained": images_trained[index],
                           "styles_in_pack": len(plan.styles), "workers": config.training.num_workers, "train_seconds": train_seconds},
            "run_name": plan.run_name,
            "seed": plan.training.seed,  # the config's, or a retrain's own (factory/packs.py)
            "architecture": architecture(style, trained is None or trained.net.output_norm is not None),
            **({"family": family} if family else {}),
            **({"added_to_family": True} if style.adds_to else {}),
            # How the model stylises photos it never trained on, in numbers (factory/quality.py, factory/held_out.py).
            "quality": {**figures, "preview_photo": photos.preview_name},
        }
        export = None if family else onnx_model.export(net)  # a family's export serves its styles
        int8 = None
        if export is not None:  # a family's export takes style vectors: not quantised (yet)
            int8, metadata["int8"] = int8_copy(export, calibration or [], photos, style_image, figures, style.width)
        thumbnail = images.encode(images.fit_within(style_image, THUMBNAIL_MAX_SIDE))
        version = registry.publish(config.registry, style.name, model_state, metadata, thumbnail, images.encode(preview, "jpeg"),
                                   onnx_model=export, int8_onnx_model=int8)
        logger.info("published %s version %s to %s (colour shift %.2f, structure kept %.2f)", style.name, version,
                    config.registry, figures["colour_shift"], figures["structure_kept"])
        outcomes.append(Outcome(style.name, "published", progress["step"], losses.get("total"), images_per_second, version,
                                quality={key: figures[key] for key in ("colour_shift", "structure_kept")}))
    return outcomes


def write_contact_sheet(config: FactoryConfig, photos: HeldOutPhotos, outcomes: list[Outcome], weights: VGGWeights) -> str | None:
    """<registry>/contact_sheet.jpg from the registry's current thumbnails and previews of this run's styles."""
    entries = []
    for outcome in outcomes:
        if outcome.status == "failed":
            continue
        style_image = images.decode_rgb(registry.read_file(config.registry, outcome.style, registry.THUMBNAIL_FILE, outcome.version),
                                        max_pixels=images.CONFIG_IMAGE_MAX_PIXELS)
        output = images.decode_rgb(registry.read_file(config.registry, outcome.style, registry.PREVIEW_FILE, outcome.version),
                                   max_pixels=images.CONFIG_IMAGE_MAX_PIXELS)
        caption = "  ".join(f"{label} {outcome.quality[key]:.2f}" for label, key in (("colour", "colour_shift"), ("structure", "structure_kept"))
                            if key in outcome.quality)
        entries.append(contact_sheet.SheetEntry(outcome.style, style_image, output, caption))
    if not entries:
        return None
    loss = config.loss
    title = (f"{config.name}: {len(entries)} style(s), {config.data.image_size} px\nloss network: {weights.source}"
             f"\nnormalisation {loss.normalisation}, weights {loss.content_weight:g} / {loss.style_weight:g} / {loss.tv_weight:g}"
             f"\nfigures: mean over {len(photos.evaluation)} held-out photo(s) ({', '.join(photos.evaluation)})")
    sheet = contact_sheet.render(photos.preview, entries, title)
    uri = storage.join(config.registry, "contact_sheet.jpg")
    storage.write_bytes(uri, images.encode(sheet, "jpeg"))
    return uri


def print_table(outcomes: list[Outcome], skipped: dict) -> None:
    print("\n" + "=" * 100)
    print(f"{'style':<24} {'outcome':<18} {'steps':>7} {'loss':>11} {'img/s/style':>12} {'colour':>7} {'struct':>7}  version / detail")
    for outcome in outcomes:
        loss = f"{outcome.loss:.4g}" if outcome.loss is not None else "-"
        rate = f"{outcome.images_per_second:.1f}" if outcome.images_per_second is not None else "-"
        colour, structure = (f"{outcome.quality[key]:.2f}" if key in outcome.quality else "-" for key in ("colour_shift", "structure_kept"))
        print(f"{outcome.style:<24} {outcome.status:<18} {outcome.steps:>7} {loss:>11} {rate:>12} {colour:>7} {structure:>7}  "
              f"{' '.join(part for part in (outcome.version, outcome.detail) if part)}")
    print("colour: how far each model moved a photo's colours toward the painting's (1 = all the way); "
          "struct: how much of the photo's edges it keeps (1 = all); both the mean over evaluation_photos, photos no model trained on")
    print(f"skipped content files: {skipped.get('count', 0)} {skipped.get('by_reason', {})}")
    print("=" * 100, flush=True)
