"""A style family: many styles in one transform network (Dumoulin, Shlens & Kudlur, "A Learned
Representation for Artistic Style", ICLR 2017; Magenta's image_stylization). No Ray here.

The family's network is a TransformNet whose instance norms are conditional: every convolution is
shared, and a style is only a vector of scales and shifts for the normalised layers (3,206 numbers at
full width, 0.2% of the network). As in Magenta's training, every image of a step carries its own
style (its conditional norm gathers one style vector per image), so one step moves the shared
convolutions toward several styles at once rather than swinging them toward one style at a time.
The draws are a function of the seed and the image's place in the run, so every worker (and a
resumed run) draws the same, and every style gets an equal share of each pass over the styles.
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

    forward((B, 3, H, W), (B,) style indices) -> (B, 3, H, W): each image stylised by its own style.
    output_norm: False only to rebuild a family published before the output conv had its norm."""

    def __init__(self, style_names: list[str], upsample: str = "nearest", width: float = 1.0, output_norm: bool = True):
        super().__init__()
        self.style_names = list(style_names)
        self.net = TransformNet(upsample, width, conditional=True, output_norm=output_norm)
        self.style_vectors = nn.Parameter(neutral_style_vector(self.net).repeat(len(style_names), 1))  # (S, style_size)

    def forward(self, content: torch.Tensor, image_styles: torch.Tensor | list[int]) -> torch.Tensor:
        """image_styles: a style index per image (B,). A tensor, as the training step passes it: torch.compile
        would specialise on a list's values and compile a graph per draw."""
        image_styles = torch.as_tensor(image_styles, device=content.device)
        return self.net(content, self.style_vectors.index_select(0, image_styles))


def image_styles(seed: int, first_image: int, count: int, family_size: int) -> list[int]:
    """The styles of images first_image .. first_image + count - 1 of a family's run (counted over the
    whole global batch of every step): each run of family_size consecutive images is one pass over the
    styles, in an order drawn from the seed and the pass alone. So the workers of a pack agree without
    talking, a resumed run draws what the lost run would have, and every style gets exactly one image
    of every pass (a run of P passes: P images each; at most one apart anywhere in between)."""
    styles, orders = [], {}
    for image in range(first_image, first_image + count):
        turn, place = divmod(image, family_size)
        if turn not in orders:
            orders[turn] = torch.randperm(family_size, generator=torch.Generator().manual_seed(seed * 1_000_003 + turn)).tolist()
        styles.append(orders[turn][place])
    return styles


def images_per_style(seed: int, images: int, family_size: int) -> list[int]:
    """How many of a run's first `images` images each style was drawn for (image_styles' draws)."""
    passes, rest = divmod(images, family_size)
    counts = [passes] * family_size
    for style in image_styles(seed, passes * family_size, rest, family_size):
        counts[style] += 1
    return counts


class UndrawnStylesKept:
    """Leaves the style vectors of styles a step did not draw exactly as they were, Adam's moments
    included: Adam moves a parameter whose gradient is zero on the momentum it still carries (a row
    drawn once moved 4.4e-3 over the next 20 steps with no gradient at all). As TensorFlow's LazyAdam
    and torch's SparseAdam do for embeddings, but for any optimiser and with a dense parameter that DDP
    and torch.compile take as they take any other. Like LazyAdam's, Adam's bias correction counts the
    optimiser's steps, not a row's own draws.

    Cost: a copy of the (S, style_size) vectors and their moments a step, put back with torch.where
    (a boolean index would make the CPU wait for the GPU every step)."""

    _MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, optimizer: torch.optim.Optimizer, style_vectors: nn.Parameter):
        self.optimizer, self.style_vectors = optimizer, style_vectors

    def step(self, drawn: torch.Tensor, optimizer_step) -> None:
        """drawn: (S,) bool, the styles any image of this step (on any worker) carried; optimizer_step:
        the call that steps the optimiser (a GradScaler's step, which may skip it)."""
        drawn = drawn.to(self.style_vectors.device, non_blocking=True)[:, None]
        state = self.optimizer.state.get(self.style_vectors, {})
        before = {name: state[name].clone() for name in self._MOMENTS if name in state}
        vectors = self.style_vectors.detach().clone()
        optimizer_step()
        state = self.optimizer.state.get(self.style_vectors, {})
        with torch.no_grad():
            self.style_vectors.copy_(torch.where(drawn, self.style_vectors, vectors))
            for name, saved in before.items():
                state[name].copy_(torch.where(drawn, state[name], saved))


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
        if style_vector.shape != (net.style_size,):
            raise ValueError(f"a style vector of {tuple(style_vector.shape)} numbers does not fit its family's network, which takes "
                             f"({net.style_size},) (families published before the output conv had its norm take 3,200 at full width: "
                             "is the family's architecture.output_norm right?)")
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
