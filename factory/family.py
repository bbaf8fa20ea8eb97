"""A style family: many styles in one transform network (Dumoulin, Shlens & Kudlur, "A Learned
Representation for Artistic Style", ICLR 2017; Magenta's image_stylization). No Ray here.

The family's network is a TransformNet whose instance norms are conditional: every convolution is
shared, and a style is only a vector of scales and shifts for the normalised layers (3,200 numbers at
full width, 0.2% of the network). Each training step stylises the content batch with a few of the
family's styles, drawn from the step number so that every worker (and a resumed run) draws the same.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from factory.transform_net import TransformNet


def neutral_style_vector(net: TransformNet) -> torch.Tensor:
    """Scales of 1 and shifts of 0 for every norm: plain instance norm, where every style starts."""
    parts = []
    for size in net.style_slice_sizes:
        parts += [torch.ones(size // 2), torch.zeros(size // 2)]
    return torch.cat(parts)


class StyleFamily(nn.Module):
    """The family's network and one style vector per style.

    forward((B, 3, H, W), [i, j, ...]) -> (k, B, 3, H, W): the batch stylised by each listed style, in
    that order, as one batch of k*B through the network."""

    def __init__(self, style_names: list[str], upsample: str = "nearest", width: float = 1.0):
        super().__init__()
        self.style_names = list(style_names)
        self.net = TransformNet(upsample, width, conditional=True)
        self.style_vectors = nn.Parameter(neutral_style_vector(self.net).repeat(len(style_names), 1))  # (S, style_size)

    def forward(self, content: torch.Tensor, styles: torch.Tensor | list[int]) -> torch.Tensor:
        """styles: indices (k,). A tensor, as the training step passes them: torch.compile would specialise
        on a list's values and compile a graph per draw."""
        batch, styles = content.shape[0], torch.as_tensor(styles, device=content.device)
        vectors = self.style_vectors.index_select(0, styles).repeat_interleave(batch, dim=0)  # (k*B, style_size)
        stylised = self.net(content.repeat(styles.shape[0], 1, 1, 1), vectors)  # (k*B, 3, H, W), style-major
        return stylised.unflatten(0, (styles.shape[0], batch))


def styles_for_step(seed: int, step: int, family_size: int, per_step: int) -> list[int]:
    """The family's styles a step trains (sorted indices): a function of the seed and step alone, so the
    workers of a pack agree without talking, and a resumed run draws what the lost run would have."""
    if per_step >= family_size:
        return list(range(family_size))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return sorted(torch.randperm(family_size, generator=generator)[:per_step].tolist())


class FamilyStyle(nn.Module):
    """One style of a family, callable like a single-style TransformNet: what the registry loads for a
    family's style, so previews, the stylize CLI and serving run it as they run any style. Several may
    share one family network (its convolutions are only read)."""

    # Moving or converting one FamilyStyle converts the network it shares (Module._apply swaps each
    # parameter's data in place): two serving threads loading styles of one family onto a GPU at once
    # would interleave those swaps. One conversion at a time; a repeated one finds nothing to change.
    _converting = threading.Lock()

    def __init__(self, net: TransformNet, style_vector: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("style_vector", style_vector.detach().clone())
        self.width = net.width

    def _apply(self, fn, recurse=True):
        with FamilyStyle._converting:
            return super()._apply(fn, recurse)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images, self.style_vector.expand(images.shape[0], -1))

    def core(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.core(images, self.style_vector.expand(images.shape[0], -1))
