"""VGG-19 weights from the sources people have, each with the preprocessing its network was trained for.

- MatConvNet's `imagenet-vgg-verydeep-19.mat` (the seed's file), in both published formats: the older
  one with a top-level `normalization` struct, the newer one with `layers` and `meta`. Fields are read
  by name. The network expects RGB in 0..255 minus the file's mean pixel, with no division by std.
- torchvision's VGG-19 state dict (`.pth`, or torchvision's own download): RGB in 0..1, normalised by
  the ImageNet mean and std.
- "random": an untrained network for offline smoke runs and tests. Never chosen silently.
"""

from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import dataclass

import numpy as np
import torch

from factory import storage

logger = logging.getLogger(__name__)

# (block, index, in_channels, out_channels) of VGG-19's 16 convolutions, in order.
VGG19_CONVS = tuple(
    (block, index, in_channels if index == 1 else out_channels, out_channels)
    for block, count, in_channels, out_channels in ((1, 2, 3, 64), (2, 2, 64, 128), (3, 4, 128, 256), (4, 4, 256, 512), (5, 4, 512, 512))
    for index in range(1, count + 1)
)
CONV_NAMES = tuple(f"conv{block}_{index}" for block, index, _, _ in VGG19_CONVS)
# Positions of the convolutions in torchvision's `vgg19().features` (ReLUs and pools in between).
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
MATCONVNET_MEAN_PIXEL = (123.68, 116.779, 103.939)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM = "random"
TORCHVISION_DOWNLOAD = "torchvision"
HOW_TO_GET_WEIGHTS = (
    "Download the MatConvNet file imagenet-vgg-verydeep-19.mat (about 510 MB, from the MatConvNet "
    "pretrained-models page, https://www.vlfeat.org/matconvnet/pretrained/) into data/, or save "
    "torchvision's weights with `python -c \"import torch, torchvision; torch.save(torchvision.models."
    "vgg19(weights='IMAGENET1K_V1').state_dict(), 'data/vgg19.pth')\"` on a machine with internet, and "
    "list that path under loss_network.weights. For an offline smoke run only, list \"random\"."
)


class VGGWeightsError(ValueError):
    """A weights source exists but is not usable VGG-19 weights; the message says what was expected."""


@dataclass(frozen=True)
class VGGWeights:
    """The convolutions of VGG-19 (weight (out, in, 3, 3), bias (out,)) and the input preprocessing."""

    convs: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    # Preprocessing from the shared 0..255 RGB convention: (pixels / input_scale - mean) / std.
    input_scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Where the weights came from, recorded in every published model's metadata.
    source: str

    @property
    def is_random(self) -> bool:
        return self.source == RANDOM

    def first(self, count: int) -> "VGGWeights":
        """Only the first `count` convolutions: a loss network needs none past its deepest layer."""
        return VGGWeights(self.convs[:count], self.input_scale, self.mean, self.std, self.source)


def _check_shapes(convs: list[tuple[torch.Tensor, torch.Tensor]], where: str) -> tuple:
    for (weight, bias), name, (_, _, in_channels, out_channels) in zip(convs, CONV_NAMES, VGG19_CONVS):
        expected = (out_channels, in_channels, 3, 3)
        if tuple(weight.shape) != expected or tuple(bias.shape) != (out_channels,):
            raise VGGWeightsError(
                f"{where}: layer {name} has weight {tuple(weight.shape)} and bias {tuple(bias.shape)}, "
                f"expected {expected} and ({out_channels},): this is not VGG-19"
            )
    return tuple((weight.float().contiguous(), bias.float().contiguous()) for weight, bias in convs)


def from_torchvision_state_dict(state_dict: dict, where: str) -> VGGWeights:
    missing = [f"features.{i}.weight" for i in TORCHVISION_CONV_INDICES if f"features.{i}.weight" not in state_dict]
    if missing:
        raise VGGWeightsError(f"{where}: not a torchvision VGG-19 state dict (missing {', '.join(missing[:3])}...)")
    convs = [(state_dict[f"features.{i}.weight"], state_dict[f"features.{i}.bias"]) for i in TORCHVISION_CONV_INDICES]
    return VGGWeights(_check_shapes(convs, where), 255.0, IMAGENET_MEAN, IMAGENET_STD, f"torchvision-state-dict:{where}")


def _read_torchvision_file(data: bytes, where: str) -> VGGWeights:
    try:
        # weights_only: a .pth is a pickle, and a pickle from anywhere can run code when loaded.
        state_dict = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        raise VGGWeightsError(
            f"{where}: cannot be read as a tensors-only torch state dict ({type(error).__name__}: {str(error)[:200]}); "
            "save the weights with torch.save(model.state_dict(), path)"
        ) from None
    if not isinstance(state_dict, dict):
        raise VGGWeightsError(f"{where}: holds a {type(state_dict).__name__}, expected a state dict")
    return from_torchvision_state_dict(state_dict, where)


def _field(struct, name: str):
    return getattr(struct, name) if hasattr(struct, "_fieldnames") and name in struct._fieldnames else None


def _mean_pixel(average_image, where: str) -> tuple[float, float, float]:
    """The RGB mean of MatConvNet's averageImage: a full 224x224x3 mean image in older files, a 1x1x3
    mean pixel in newer ones. Anything else (empty, a placeholder string, NaN) is not this network's."""
    try:
        values = np.asarray(average_image, dtype=np.float64)
    except (TypeError, ValueError):
        values = np.empty(0)
    if values.size == 0 or values.size % 3 or not np.isfinite(values).all():
        raise VGGWeightsError(
            f"{where}: normalization.averageImage is {np.asarray(average_image).shape} {np.asarray(average_image).dtype}, "
            "expected the mean pixel (1x1x3) or mean image (HxWx3) of the training set in 0..255: "
            "this is not an intact imagenet-vgg-verydeep-19.mat; download it again"
        )
    mean = values.reshape(-1, 3).mean(axis=0)
    return (float(mean[0]), float(mean[1]), float(mean[2]))


def _read_matconvnet_file(data: bytes, where: str) -> VGGWeights:
    import scipy.io  # only MatConvNet users need it at run time

    try:
        mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False)
    except Exception as error:
        raise VGGWeightsError(f"{where}: not a readable MATLAB .mat file ({type(error).__name__}: {str(error)[:200]})") from None
    if "layers" not in mat:
        raise VGGWeightsError(f"{where}: has no 'layers' variable; expected MatConvNet's imagenet-vgg-verydeep-19.mat")

    # Older files keep the normalisation at the top level, newer ones under 'meta'.
    normalization = mat.get("normalization")
    if normalization is None and "meta" in mat:
        normalization = _field(mat["meta"], "normalization")
    average_image = _field(normalization, "averageImage") if normalization is not None else None
    mean = MATCONVNET_MEAN_PIXEL if average_image is None else _mean_pixel(average_image, where)

    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for layer in np.atleast_1d(mat["layers"]):
        name = _field(layer, "name")
        if name not in CONV_NAMES:
            continue
        weights = _field(layer, "weights")
        if weights is not None:
            kernel, bias = weights[0], weights[1]
        else:  # the oldest releases name them 'filters' and 'biases'
            kernel, bias = _field(layer, "filters"), _field(layer, "biases")
        if kernel is None or bias is None:
            raise VGGWeightsError(f"{where}: layer {name} has neither 'weights' nor 'filters'/'biases'")
        kernel = np.asarray(kernel, dtype=np.float32)
        if kernel.ndim != 4:
            raise VGGWeightsError(f"{where}: layer {name} has a {kernel.ndim}-d kernel, expected 4-d")
        # MatConvNet stores (height, width, in, out); torch wants (out, in, height, width). Both
        # compute cross-correlation, so no kernel flip.
        found[name] = (torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()), torch.from_numpy(np.asarray(bias, dtype=np.float32).reshape(-1)))
    missing = [name for name in CONV_NAMES if name not in found]
    if missing:
        raise VGGWeightsError(f"{where}: no layer(s) {', '.join(missing)}; expected the 19-layer VGG (imagenet-vgg-verydeep-19.mat)")
    convs = _check_shapes([found[name] for name in CONV_NAMES], where)
    return VGGWeights(convs, 1.0, mean, (1.0, 1.0, 1.0), f"matconvnet:{where}")


def read_weights_file(data: bytes, where: str) -> VGGWeights:
    """Parse a .mat or .pth file by its content (a MATLAB header or a zip/pickle), not its name."""
    if data[:6] == b"MATLAB" or where.endswith(".mat"):
        return _read_matconvnet_file(data, where)
    if zipfile.is_zipfile(io.BytesIO(data)) or where.endswith((".pth", ".pt")):
        return _read_torchvision_file(data, where)
    raise VGGWeightsError(f"{where}: neither a MatConvNet .mat nor a torch .pth file")


def random_vgg19(seed: int = 0) -> VGGWeights:
    """Untrained VGG-19 (Kaiming-initialised like torchvision's), preprocessed like MatConvNet."""
    generator = torch.Generator().manual_seed(seed)
    convs = []
    for _, _, in_channels, out_channels in VGG19_CONVS:
        std = (2.0 / (out_channels * 9)) ** 0.5
        convs.append((torch.randn(out_channels, in_channels, 3, 3, generator=generator) * std, torch.zeros(out_channels)))
    # Inputs are scaled to about unit range so that random features neither vanish nor explode.
    return VGGWeights(tuple(convs), 255.0, IMAGENET_MEAN, IMAGENET_STD, RANDOM)


def _torchvision_download() -> VGGWeights:
    import torchvision

    model = torchvision.models.vgg19(weights=torchvision.models.VGG19_Weights.IMAGENET1K_V1)
    weights = from_torchvision_state_dict(model.state_dict(), "torchvision-download")
    return VGGWeights(weights.convs, weights.input_scale, weights.mean, weights.std, TORCHVISION_DOWNLOAD)


def load_vgg19(sources: tuple[str, ...] | list[str]) -> VGGWeights:
    """The first source that exists. A source that exists but is broken stops with its error.

    Raises FileNotFoundError, listing every source tried and how to get the weights, when none exists.
    """
    attempts = []
    for source in sources:
        if source == RANDOM:
            logger.warning(
                "\n" + "!" * 78 + "\n!! USING A RANDOM-WEIGHT VGG-19 LOSS NETWORK: models learn their paintings' colours and texture, not real brushwork.\n"
                "!! This is for offline smoke runs and tests; every published model is marked so.\n"
                f"!! {HOW_TO_GET_WEIGHTS}\n" + "!" * 78
            )
            return random_vgg19()
        if source == TORCHVISION_DOWNLOAD:
            try:
                return _torchvision_download()
            except Exception as error:  # offline, proxy, or a broken cache
                attempts.append(f"torchvision download failed ({type(error).__name__}: {str(error)[:120]})")
                continue
        try:
            data = storage.read_bytes(source)
        except FileNotFoundError:
            attempts.append(f"{source}: not found")
            continue
        logger.info("loaded VGG-19 weights file %s (%.0f MB)", source, len(data) / 1e6)
        return read_weights_file(data, source)
    raise FileNotFoundError("no VGG-19 weights could be had: " + "; ".join(attempts) + ". " + HOW_TO_GET_WEIGHTS)
