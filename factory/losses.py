"""Perceptual losses: content (feature) loss, style (Gram) loss and total variation, in two scales.

- "none": the seed's formulation (lengstrom/fast-style-transfer): mean squared feature difference,
  mean squared Gram difference summed over layers, mean squared neighbour difference of 0..255 pixels.
  Its values depend on how large the loss network's activations are, so its weights (7.5 / 100 / 200)
  only fit the MatConvNet VGG-19 they were tuned on.
- "per_layer": each term relative to its target, ||F - F_photo||^2 / ||F_photo||^2 for content,
  ||G - G_style||^2 / ||G_style||^2 averaged over the style layers, and the stylised image's total
  variation over the photo's. Every term is dimensionless and unchanged when a layer's activations are
  scaled, so one set of weights means the same thing with any VGG-19 (MatConvNet, torchvision, random).

Gram matrices are computed in float32 even under autocast: with C*H*W in the hundreds of thousands,
fp16 sums of products overflow (65504 max) and the style loss turns into inf/NaN.
"""

from __future__ import annotations

import torch

from factory.settings import LOSS_NORMALISATIONS as NORMALISATIONS

# Below this mean squared neighbour difference (in 0..255 pixel units) a photo counts as flat: the
# relative TV term divides by at least this, so a blank photo cannot blow it up.
FLAT_PHOTO_TV = 1.0
# Guards the relative terms against an all-zero target (a dead layer of a random network).
_TINY = 1e-12


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C) Gram matrix normalised by C*H*W, always in float32."""
    batch, channels, height, width = features.shape
    with torch.autocast(device_type=features.device.type, enabled=False):
        flat = features.float().reshape(batch, channels, height * width)
        return torch.bmm(flat, flat.transpose(1, 2)) / (channels * height * width)


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of feature maps, (B, C, H, W) each."""
    return _content_per_image(features, target).mean()  # every image has the same size: the batch mean


def style_loss(grams: list[torch.Tensor], target_grams: list[torch.Tensor]) -> torch.Tensor:
    """Sum over layers of the mean squared Gram difference; targets are (1, C, C) or (B, C, C)."""
    return _style_per_image(grams, target_grams).mean()


def total_variation_loss(images: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between vertical and horizontal neighbours of (B, C, H, W) images."""
    return _per_image_total_variation(images).mean()


def relative_content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over images of ||F - F_photo||^2 / ||F_photo||^2; (B, C, H, W) each."""
    return _relative_content_per_image(features, target).mean()


def relative_style_loss(grams: list[torch.Tensor], target_grams: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers (and images) of ||G - G_style||^2 / ||G_style||^2; targets (1, C, C) or (B, C, C)."""
    return _relative_style_per_image(grams, target_grams).mean()


def relative_total_variation(images: torch.Tensor, photos: torch.Tensor) -> torch.Tensor:
    """Mean over images of TV(stylised) / TV(photo): 1.0 is exactly as much fine detail as the photo has."""
    return _relative_total_variation_per_image(images, photos).mean()


# Each term per image, (B,): a family's step gives every image its own style, and its styles' losses
# are the means over their own images.

def _per_image_squared_norm(values: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,) sum of squares of each image's entries."""
    return values.float().flatten(1).pow(2).sum(dim=1)


def _content_per_image(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (features.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def _style_per_image(grams: list[torch.Tensor], target_grams: list[torch.Tensor]) -> torch.Tensor:
    return sum((gram - target.expand_as(gram)).pow(2).flatten(1).mean(dim=1) for gram, target in zip(grams, target_grams, strict=True))


def _relative_content_per_image(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    target = target.float()
    return _per_image_squared_norm(features.float() - target) / _per_image_squared_norm(target).clamp_min(_TINY)


def _relative_style_per_image(grams: list[torch.Tensor], target_grams: list[torch.Tensor]) -> torch.Tensor:
    per_layer = []
    for gram, target in zip(grams, target_grams, strict=True):
        target = target.expand_as(gram)
        per_layer.append(_per_image_squared_norm(gram - target) / _per_image_squared_norm(target).clamp_min(_TINY))
    return torch.stack(per_layer).mean(dim=0)


def _per_image_total_variation(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B,) mean squared neighbour difference of each image."""
    images = images.float()
    vertical = (images[..., 1:, :] - images[..., :-1, :]).pow(2).flatten(1).mean(dim=1)
    horizontal = (images[..., :, 1:] - images[..., :, :-1]).pow(2).flatten(1).mean(dim=1)
    return vertical + horizontal


def _relative_total_variation_per_image(images: torch.Tensor, photos: torch.Tensor) -> torch.Tensor:
    return _per_image_total_variation(images) / _per_image_total_variation(photos).clamp_min(FLAT_PHOTO_TV)


def stability_per_image(stylised: torch.Tensor, noisy_stylised: torch.Tensor, noise_sd: float) -> torch.Tensor:
    """(B,) how much each output moved when its photo got Gaussian noise of noise_sd (0..255 pixels):
    the mean squared change of the output over the noise's variance (Gupta et al. 2017, "Characterizing
    and Improving Stability in Neural Style Transfer"). Dimensionless in either normalisation: 1.0 is an
    output that changes as much as its input did; a per-frame network that flickers is well above it."""
    return (stylised.float() - noisy_stylised.float()).pow(2).flatten(1).mean(dim=1) / noise_sd ** 2


def loss_terms(
    normalisation: str,
    stylised: torch.Tensor,
    photos: torch.Tensor,
    features: torch.Tensor,
    photo_features: torch.Tensor,
    grams: list[torch.Tensor],
    target_grams: list[torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The unweighted content, style and TV terms in the chosen scale, as batch means (per_image_loss_terms').

    stylised, photos: (B, 3, H, W) in 0..255; features, photo_features: the content layer's (B, C, h, w);
    grams: the stylised images' (B, C, C) per style layer; target_grams: the style image's (1, C, C).
    """
    return {key: value.mean() for key, value in per_image_loss_terms(normalisation, stylised, photos, features, photo_features, grams,
                                                                     target_grams).items()}


def per_image_loss_terms(
    normalisation: str,
    stylised: torch.Tensor,
    photos: torch.Tensor,
    features: torch.Tensor,
    photo_features: torch.Tensor,
    grams: list[torch.Tensor],
    target_grams: list[torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The unweighted content, style and TV terms of each image (B,), in the chosen scale: the one place
    both scales are defined. Arguments as loss_terms'; target_grams may also be (B, C, C), a target
    per image (a family's step, where every image carries its own style). Every image has the same
    size, so the batch mean of a term is the term of the whole batch."""
    if normalisation == "none":
        return {
            "content": _content_per_image(features, photo_features),
            "style": _style_per_image(grams, target_grams),
            "tv": _per_image_total_variation(stylised),
        }
    if normalisation == "per_layer":
        return {
            "content": _relative_content_per_image(features, photo_features),
            "style": _relative_style_per_image(grams, target_grams),
            "tv": _relative_total_variation_per_image(stylised, photos),
        }
    raise ValueError(f"unknown loss normalisation {normalisation!r}; choose one of {', '.join(NORMALISATIONS)}")
