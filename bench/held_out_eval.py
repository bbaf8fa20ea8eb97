"""Judging trained models on photos they never trained on, over several seeds: what the training benches share.

- HELD_OUT_PHOTOS: the bundled held-out photos (data/samples/held_out, never under data.source) and,
  where this machine has them, the classic content photos in ../shared/data/content that no run trains on.
- judge: each model's own perceptual loss (its recipe's loss network, layers and weights) on every
  held-out photo, averaged (the loss it was trained to lower, on photos it never saw), its colour
  shift and structure kept there (factory/quality.py), and its outputs of them.
- distinctness: how different a set of styles' outputs of the same photos are from each other.
- spread and verdict: a figure over seeds as mean, standard deviation, min and max, and whether a goal
  holds given that spread (met only if mean - sd clears it; missed only if mean + sd does not).
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path

import torch

from bench.quality import loss_network_for, photo_tensor, style_as_trained
from factory import images, quality, registry
from factory.loss_network import LossNetwork
from factory.style_pack import PerceptualObjective

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_CONTENT = REPO_ROOT.parent / "shared" / "data" / "content"
BUNDLED_HELD_OUT = [REPO_ROOT / "data" / "samples" / "held_out" / name for name in ("chelsea.png", "rocket.jpg")]
HELD_OUT_PHOTOS = BUNDLED_HELD_OUT + [path for path in (SHARED_CONTENT / name for name in
                                      ("golden_gate.jpg", "tubingen.jpg", "hoovertowernight.jpg", "amber.jpg")) if path.exists()]
LOSS_SIDE, PICTURE_SIDE = 128, 256  # the loss at about the training crops' scale; pictures at a size a person compares


def judge(registry_uri: str, style_images: dict[str, bytes], photos: list[Path] = HELD_OUT_PHOTOS) -> tuple[dict, dict]:
    """({style: {"held_out_loss", "colour_shift", "structure_kept"}}, {style: its outputs of the photos at PICTURE_SIDE}).

    style_images: {style: its image's bytes}. The loss: each model's own perceptual loss (its recipe's
    loss network, layers and weights) at LOSS_SIDE; the figures (factory/quality.py) at PICTURE_SIDE;
    each the mean over the held-out photos."""
    at_loss_side = [photo_tensor(path, LOSS_SIDE)[0] for path in photos]
    pictures = [photo_tensor(path, PICTURE_SIDE) for path in photos]
    networks, figures, outputs = {}, {}, {}
    for style, image_bytes in style_images.items():
        net, metadata = registry.load_model(registry_uri, style)
        settings, resolved = style_as_trained(metadata, image_bytes)
        source = metadata["loss_network"]["source"]
        if source not in networks:
            networks[source] = loss_network_for(source)
        objective = PerceptualObjective(LossNetwork(networks[source], [settings.content_layer, *settings.style_layers]), settings, [resolved],
                                        torch.device("cpu"))
        painting = images.decode_rgb(image_bytes, max_pixels=images.CONFIG_IMAGE_MAX_PIXELS)
        with torch.inference_mode():
            loss = statistics.mean(float(objective(photo, net(photo).unsqueeze(0))[0]) for photo in at_loss_side)
            outputs[style] = [net(tensor)[0] for tensor, _ in pictures]
        per_photo = [quality.figures(images.to_image(output), photo, painting) for output, (_, photo) in zip(outputs[style], pictures)]
        figures[style] = {"held_out_loss": loss, **{key: statistics.mean(values[key] for values in per_photo)
                                                    for key in ("colour_shift", "structure_kept")}}
    return figures, outputs


def distinctness(outputs_by_style: dict[str, list[torch.Tensor]]) -> float:
    """The mean absolute pixel difference (0..255) between two styles' outputs of the same photo, over every
    pair of styles and every photo. Colour shift and structure kept judge each style alone; a family whose
    styles all learnt one look scores well on both, and low here."""
    styles = list(outputs_by_style)
    return statistics.mean(float((a - b).abs().mean()) for first, second in itertools.combinations(styles, 2)
                           for a, b in zip(outputs_by_style[first], outputs_by_style[second]))


def spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values), "values": values}


def verdict(figure: dict, goal: float, higher_is_better: bool = True) -> str:
    """'met', 'missed' or 'undecided' for a spread() figure against a goal, given its spread over seeds:
    met only if the goal holds one standard deviation toward the worse side of the mean, missed only if
    it fails one standard deviation toward the better side; undecided from a single seed."""
    mean, sd = figure["mean"], figure["sd"]
    if figure["n"] < 2:  # one seed has no spread to judge by
        return "undecided"
    if higher_is_better:
        return "met" if mean - sd >= goal else "missed" if mean + sd < goal else "undecided"
    return "met" if mean + sd <= goal else "missed" if mean - sd > goal else "undecided"


def photo_names(photos: list[Path] = HELD_OUT_PHOTOS) -> list[str]:
    return [path.name for path in photos]


def evaluation_setting() -> dict:
    """The config keys for the published previews and figures (factory/held_out.py): the bundled held-out
    photos, as absolute paths. The benches judge on every held-out photo themselves (judge)."""
    return {"preview_image": str(BUNDLED_HELD_OUT[0]), "evaluation_photos": [str(path) for path in BUNDLED_HELD_OUT]}
