"""The GPU fast paths compute what the plain paths compute, within stated tolerances, checked on CPU."""

import copy

import pytest
import torch

from factory.loss_network import LossNetwork
from factory.settings import LossSettings, ResolvedStyle
from factory.style_pack import PerceptualObjective, StepRunner, StylePack, make_optimizer
from factory.transform_net import TransformNet
from factory.vgg_weights import random_vgg19
from serve.style_model import fast_input, fast_network

# Stylising: fp16 + channels_last against fp32, in 0..255 pixel units.
STYLISE_MEAN_TOLERANCE, STYLISE_MAX_TOLERANCE = 0.5, 3.0


def test_fp16_channels_last_stylising_matches_fp32():
    torch.manual_seed(0)
    net = TransformNet().eval()
    images = torch.rand(2, 3, 72, 96) * 255
    with torch.inference_mode():
        plain = net(images)
        fast = fast_network(copy.deepcopy(net))(fast_input(images)).float()
    difference = (plain - fast).abs()
    assert difference.mean() < STYLISE_MEAN_TOLERANCE and difference.max() < STYLISE_MAX_TOLERANCE, (difference.mean(), difference.max())


def style(name, image_bytes):
    return ResolvedStyle(name=name, image_bytes=image_bytes, image_sha256="-", content_weight=1.0, style_weight=1e4,
                         tv_weight=1e-2, steps=10, learning_rate=1e-3)


def losses_over_steps(style_names, channels_last, steps=6):
    """Train from the same initial weights on the same batches; per-style total loss per step."""
    from factory import images
    from PIL import Image

    buffer = images.encode(Image.new("RGB", (64, 64), (200, 60, 30)), "png")
    settings = LossSettings(style_size=32, normalisation="none")
    loss_network = LossNetwork(random_vgg19(), [settings.content_layer, *settings.style_layers])
    styles = [style(name, buffer) for name in style_names]
    pack = StylePack(style_names)
    for net in pack.nets.values():  # every style starts from the same weights, in any pack
        net.load_state_dict(reference_init())
    if channels_last:
        pack = pack.to(memory_format=torch.channels_last)
    runner = StepRunner(pack, PerceptualObjective(loss_network, settings, styles, "cpu"), make_optimizer(pack, styles),
                        "fp32", "cpu", channels_last=channels_last)
    generator = torch.Generator().manual_seed(1)
    history = []
    for _ in range(steps):
        content = torch.rand(4, 3, 32, 32, generator=generator) * 255
        history.append({name: float(parts["total"]) for name, parts in runner.step(content).items()})
    return history


_INIT = {}


def reference_init():
    if not _INIT:
        torch.manual_seed(123)
        _INIT["state"] = TransformNet().state_dict()
    return copy.deepcopy(_INIT["state"])


def test_a_style_trained_in_a_pack_follows_the_same_loss_curve_as_alone():
    alone = losses_over_steps(["a"], channels_last=False)
    packed = losses_over_steps(["a", "b"], channels_last=False)
    for step_alone, step_packed in zip(alone, packed):
        assert abs(step_alone["a"] - step_packed["a"]) <= 1e-3 * abs(step_alone["a"]) + 1e-6
    assert alone[-1]["a"] < alone[0]["a"]


def test_channels_last_training_follows_the_same_loss_curve():
    plain = losses_over_steps(["a", "b"], channels_last=False)
    fast = losses_over_steps(["a", "b"], channels_last=True)
    for step_plain, step_fast in zip(plain, fast):
        for name in ("a", "b"):
            assert abs(step_plain[name] - step_fast[name]) <= 1e-2 * abs(step_plain[name]) + 1e-6


def test_a_replica_uses_the_device_it_reserved():
    from serve.style_model import reserved_device

    assert reserved_device([]) == torch.device("cpu")  # a CPU replica stays on the CPU, GPUs on the node or not
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=r"reserved GPU\(s\) \[0\] but CUDA is unusable"):
            reserved_device([0])
    else:
        assert reserved_device([0]).type == "cuda"
