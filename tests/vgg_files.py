"""Writes VGG-19 weights in the real file formats (torchvision .pth, MatConvNet .mat old and new)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import torch

from factory.vgg_weights import CONV_NAMES, IMAGENET_MEAN, IMAGENET_STD, TORCHVISION_CONV_INDICES, random_vgg19

# A MatConvNet mean pixel equal to torchvision's mean in 0..255, so that both conventions pad with
# the same colour and the two files describe exactly the same function of the input image.
MEAN_PIXEL = np.array(IMAGENET_MEAN) * 255.0


def matconvnet_convs(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random VGG-19 convs in MatConvNet's layout: kernel (h, w, in, out), bias (out,)."""
    weights = random_vgg19(seed)
    scale = 40.0  # MatConvNet nets see inputs ~60x larger than torchvision's; keep features moderate
    return [(weight.permute(2, 3, 1, 0).numpy() / scale, bias.numpy()) for weight, bias in weights.convs]


def _layers(convs, old_field_names: bool) -> np.ndarray:
    layers = []
    for (kernel, bias), name in zip(convs, CONV_NAMES):
        if old_field_names:
            layer = {"name": name, "type": "conv", "filters": kernel, "biases": bias.reshape(1, -1), "stride": [1, 1], "pad": [1, 1, 1, 1]}
        else:
            cell = np.empty((1, 2), dtype=object)
            cell[0, 0], cell[0, 1] = kernel, bias.reshape(-1, 1)
            layer = {"name": name, "type": "conv", "weights": cell, "stride": [1, 1], "pad": [1, 1, 1, 1]}
        layers.append(layer)
        layers.append({"name": name.replace("conv", "relu"), "type": "relu"})
    array = np.empty((1, len(layers)), dtype=object)
    for index, layer in enumerate(layers):
        array[0, index] = layer
    return array


def write_mat_old(path: Path, convs, old_field_names: bool = False) -> Path:
    """The older format: top-level 'layers', 'normalization' (a full 224x224x3 mean image), 'classes'."""
    average_image = np.tile(MEAN_PIXEL.astype(np.float32), (224, 224, 1))
    normalization = {"averageImage": average_image, "keepAspect": 1, "imageSize": np.array([224, 224, 3])}
    scipy.io.savemat(path, {"layers": _layers(convs, old_field_names), "normalization": normalization,
                            "classes": {"name": np.array(["a", "b"], dtype=object)}})
    return path


def write_mat_new(path: Path, convs, average_image=None) -> Path:
    """The newer format: 'layers' and 'meta' (normalization.averageImage a 1x1x3 mean pixel, unless given)."""
    if average_image is None:
        average_image = MEAN_PIXEL.reshape(1, 1, 3).astype(np.float32)
    meta = {"normalization": {"averageImage": average_image, "imageSize": np.array([224, 224, 3])},
            "classes": {"name": np.array(["a", "b"], dtype=object)}}
    scipy.io.savemat(path, {"layers": _layers(convs, False), "meta": meta})
    return path


def torchvision_state_dict(convs) -> dict[str, torch.Tensor]:
    """The same network for torchvision's preprocessing ((x/255 - mean)/std): the first conv absorbs
    the 255*std scale of each input channel; the mean is already equal."""
    state = {}
    for position, ((kernel, bias), index) in enumerate(zip(convs, TORCHVISION_CONV_INDICES)):
        weight = torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous()
        if position == 0:
            weight = weight * (255.0 * torch.tensor(IMAGENET_STD)).view(1, 3, 1, 1)
        state[f"features.{index}.weight"] = weight
        state[f"features.{index}.bias"] = torch.from_numpy(bias).clone()
    state["classifier.0.weight"] = torch.zeros(4, 4)  # a full model's state dict has a classifier too
    return state


def write_pth(path: Path, convs) -> Path:
    torch.save(torchvision_state_dict(convs), path)
    return path
