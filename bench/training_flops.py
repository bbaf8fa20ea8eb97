"""FLOPs of one training step, the transform networks' and the loss network's apart, counted by
torch.utils.flop_counter on the real step (forward and backward) at a config's batch and crop size.

A separate network per style runs every photo through each style's network and each stylised image
through VGG-19; a family's step runs each photo through the shared network once, with its own style.
Counting transform-network passes alone (as bench/families.py once did) hid that the loss network is
most of the work: FLOPs count both.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from factory.family import StyleFamily, UndrawnStylesKept
from factory.loss_network import LossNetwork
from factory.settings import LossSettings, ResolvedStyle
from factory.style_pack import PerceptualObjective, StepRunner, StylePack, make_optimizer
from factory.vgg_weights import random_vgg19


def step_flops(family: bool, style_images: dict[str, bytes], batch: int, image_size: int, loss: LossSettings,
               width: float = 1.0) -> dict[str, float]:
    """{"transform": ..., "loss_network": ..., "total": ...} FLOPs of one step of a pack of these styles
    (family=False: a network each) on a batch of `batch` crops of image_size. FLOPs do not depend on the
    weights: a random VGG-19 counts as the real one."""
    names = list(style_images)
    styles = [ResolvedStyle(name=name, image_bytes=image, image_sha256="-", content_weight=1.0, style_weight=1.0, tv_weight=1.0,
                            steps=1, learning_rate=1e-3, width=width) for name, image in style_images.items()]
    settings = loss.resolved("random")
    objective = PerceptualObjective(LossNetwork(random_vgg19(), [settings.content_layer, *settings.style_layers]), settings, styles,
                                    torch.device("cpu"))
    pack = StyleFamily(names, width=width) if family else StylePack(names, widths={name: width for name in names})
    optimizer = make_optimizer(pack, styles)
    runner = StepRunner(pack, objective, optimizer, "fp32", "cpu", undrawn_kept=UndrawnStylesKept(optimizer, pack.style_vectors) if family else None)
    photos = torch.rand(batch, 3, image_size, image_size) * 255
    draws = [index % len(names) for index in range(batch)]
    with FlopCounterMode(display=False) as counter:
        runner.step(photos, draws, sorted(set(draws))) if family else runner.step(photos)
    by_module = counter.get_flop_counts()
    total = sum(by_module["Global"].values())
    transform = sum(by_module[type(pack).__name__].values())  # the pack's forward and backward
    return {"transform": float(transform), "loss_network": float(total - transform), "total": float(total)}
