"""A pack of styles trained on one content stream, and its training step. No Ray here.

Every content batch is seen by all the pack's transform networks: it is decoded once and its VGG
content features are computed once, however many styles the pack holds, and the stylised images of
all styles go through the loss network as one batch, which keeps a GPU busy at the paper's batch of 4.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from factory import images
from factory.loss_network import LossNetwork
from factory.family import UndrawnStylesKept
from factory.losses import NORMALISATIONS, gram_matrix, per_image_loss_terms, stability_per_image
from factory.settings import LossSettings, ResolvedStyle
from factory.transform_net import TransformNet


class StylePack(nn.Module):
    """One TransformNet per style. forward((B, 3, H, W)) -> (S, B, 3, H, W), styles in pack order.

    widths: {style: network width} for styles not at full width (model.width)."""

    def __init__(self, style_names: list[str], upsample: str = "nearest", widths: dict[str, float] | None = None):
        super().__init__()
        widths = widths or {}
        self.nets = nn.ModuleDict({name: TransformNet(upsample, widths.get(name, 1.0)) for name in style_names})

    def forward(self, content: torch.Tensor) -> torch.Tensor:
        return torch.stack([net(content) for net in self.nets.values()])


def style_targets(loss_network: LossNetwork, style_image: bytes, settings: LossSettings, device) -> list[torch.Tensor]:
    """Gram matrices (1, C, C) of the style image at each style layer, computed once per run."""
    image = images.fit_within(images.decode_rgb(style_image, max_pixels=images.CONFIG_IMAGE_MAX_PIXELS), settings.style_size)
    with torch.no_grad():
        features = loss_network(images.to_tensor(image).unsqueeze(0).to(device))
    return [gram_matrix(features[layer]) for layer in settings.style_layers]


class PerceptualObjective:
    """The weighted content + style + TV loss of every style in a pack, from one loss-network pass.

    The style targets are computed here, by the network as given: StepRunner.compile compiles it only
    afterwards, so the compiler never sees a painting's own size and batch of one (which made it
    compile every training graph dynamic in batch, height and width: more compiles, slower graphs)."""

    def __init__(self, loss_network: nn.Module, settings: LossSettings, styles: list[ResolvedStyle], device):
        if settings.normalisation not in NORMALISATIONS:
            raise ValueError(f"loss.normalisation {settings.normalisation!r} is not resolved: call LossSettings.resolved(source) first")
        self.loss_network = loss_network
        self.settings = settings
        self.styles = styles
        targets = [style_targets(loss_network, style.image_bytes, settings, device) for style in styles]
        # Per style layer, every style's Gram target (S, C, C): an image's target is a row of it.
        self.target_grams = [torch.cat([style_targets[layer] for style_targets in targets]) for layer in range(len(settings.style_layers))]
        self.weights = torch.tensor([[style.content_weight, style.style_weight, style.tv_weight, style.stability_weight] for style in styles],
                                    device=device)
        # Any style with a stability loss: StepRunner then stylises every photo a second time, with noise.
        self.wants_noisy_outputs = any(style.stability_weight > 0 for style in styles)

    def noisy(self, content: torch.Tensor) -> torch.Tensor:
        """The photos with the stability loss's Gaussian noise added (not clipped: what matters is a small
        change). Drawn from torch's generator: each worker's photos differ, so the same draw on every rank
        does no harm; a resumed run draws afresh (the noise is not part of a checkpoint, the photos are)."""
        return content + torch.randn_like(content) * self.settings.stability_noise

    def __call__(self, content: torch.Tensor, stylised: torch.Tensor, image_styles: torch.Tensor | None = None,
                 noisy_stylised: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
        """-> (the step's loss, each style's parts: its content, style, TV and total losses, the means over
        its images, and "images", how many it had; a style with none has zeros).

        content (B, 3, H, W). stylised: (S, B, 3, H, W), every photo by every style of the objective (a
        pack of separate networks); or (B, 3, H, W) with image_styles (B,), each photo by its own style
        (a family's step). The step's loss is the sum of every stylised image's weighted loss over B:
        a separate network's gradient is its style's batch mean, as before families had per-image styles.
        noisy_stylised: the same networks' outputs of noisy(content), shaped as stylised, for the stability
        loss (training, where wants_noisy_outputs); None leaves that term out (judging a model)."""
        batch = content.shape[0]
        if image_styles is None:
            count = stylised.shape[0]
            image_styles = torch.arange(count, device=content.device).repeat_interleave(batch)
            photo_rows = torch.arange(batch, device=content.device).repeat(count)
            stylised = stylised.flatten(0, 1)  # style-major: every style in one loss-network pass
            if noisy_stylised is not None:
                noisy_stylised = noisy_stylised.flatten(0, 1)
        else:
            image_styles, photo_rows = image_styles.to(content.device), torch.arange(batch, device=content.device)
        with torch.no_grad():
            content_features = self.loss_network(content)[self.settings.content_layer]  # once per photo, whatever the styles
        features = self.loss_network(stylised)
        terms = per_image_loss_terms(
            self.settings.normalisation,
            stylised,
            content[photo_rows],
            features[self.settings.content_layer],
            content_features[photo_rows],
            [gram_matrix(features[layer]) for layer in self.settings.style_layers],
            [targets[image_styles] for targets in self.target_grams],
        )
        weights = self.weights[image_styles]  # (N, 4)
        terms["total"] = weights[:, 0] * terms["content"] + weights[:, 1] * terms["style"] + weights[:, 2] * terms["tv"]
        if noisy_stylised is not None:
            terms["stability"] = stability_per_image(stylised, noisy_stylised, self.settings.stability_noise)
            terms["total"] = terms["total"] + weights[:, 3] * terms["stability"]
        total = terms["total"].sum() / batch
        # Each style's means over its own images, computed on the device without a sync.
        images = torch.zeros(len(self.styles), device=content.device).index_add_(0, image_styles, torch.ones_like(terms["total"]))
        means = {key: torch.zeros(len(self.styles), device=content.device).index_add_(0, image_styles, value.detach().float()) / images.clamp_min(1)
                 for key, value in terms.items()}
        parts = {style.name: {**{key: value[index] for key, value in means.items()}, "images": images[index]}
                 for index, style in enumerate(self.styles)}
        return total, parts


@dataclass
class StepRunner:
    """Runs one optimiser step of a pack at a given precision; the same code on CPU and GPU."""

    pack: nn.Module
    objective: PerceptualObjective
    optimizer: torch.optim.Optimizer
    precision: str  # "fp32", "bf16" or "fp16"
    device_type: str
    # Feed batches in channels_last layout (NHWC), which tensor cores want; the caller converts the
    # pack and loss network too.
    channels_last: bool = False
    # A family's: keeps the vectors of styles a step did not draw where they were (factory/family.py).
    undrawn_kept: UndrawnStylesKept | None = None

    def __post_init__(self):
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=self.precision == "fp16")

    def compile(self, backend="inductor") -> None:
        """torch.compile the pack and the loss network for the training shapes only (static: the batch
        never changes size). Expect three graphs: the pack, and the loss network twice (the photos,
        without gradients, and the stylised images of every style)."""
        self.pack = torch.compile(self.pack, backend=backend, dynamic=False)
        self.objective.loss_network = torch.compile(self.objective.loss_network, backend=backend, dynamic=False)

    def load_scaler_state(self, state: dict) -> None:
        """A checkpoint's fp16 loss scale. A run that began in bf16 or fp32 (another GPU, or the CPU)
        saved an empty one: an fp16 run resumed from it starts from the default scale."""
        if self.scaler.is_enabled() and state:
            self.scaler.load_state_dict(state)

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device_type, dtype=dtype)

    def _stylise(self, content: torch.Tensor, styles: torch.Tensor | None):
        """The pack's outputs; of a batch doubled with noisy copies, (outputs, noisy copies' outputs)."""
        if styles is None:
            stylised = self.pack(content)  # (S, B, 3, H, W)
            return stylised if not self.objective.wants_noisy_outputs else stylised.chunk(2, dim=1)
        stylised = self.pack(content, styles)  # (B, 3, H, W)
        return stylised if not self.objective.wants_noisy_outputs else stylised.chunk(2, dim=0)

    def step(self, content: torch.Tensor, image_styles: list[int] | None = None,
             drawn: list[int] | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """content: (B, 3, H, W) float 0..255 on the device. A family's step: image_styles, each photo's
        style, and drawn, the styles of the whole global batch (every worker's: factory/family.py); the
        others' vectors stay as they are (undrawn_kept). None for a pack of separate networks. Returns
        detached per-style losses (PerceptualObjective's parts)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.channels_last:
            content = content.contiguous(memory_format=torch.channels_last)
        styles = None if image_styles is None else torch.tensor(image_styles, device=content.device)
        with self.autocast():
            if self.objective.wants_noisy_outputs:  # the photos and their noisy copies through the networks as one batch
                stylised, noisy_stylised = self._stylise(torch.cat([content, self.objective.noisy(content)]),
                                                         None if styles is None else torch.cat([styles, styles]))
            else:
                stylised, noisy_stylised = self._stylise(content, styles), None
            total, parts = self.objective(content, stylised, styles, noisy_stylised)
        self.scaler.scale(total).backward()
        if self.undrawn_kept is None or drawn is None:
            self.scaler.step(self.optimizer)
        else:
            mask = torch.zeros(self.undrawn_kept.style_vectors.shape[0], dtype=torch.bool)
            mask[drawn] = True
            self.undrawn_kept.step(mask, lambda: self.scaler.step(self.optimizer))
        self.scaler.update()
        return {name: {key: value.detach() for key, value in values.items()} for name, values in parts.items()}


class NonFiniteLoss(RuntimeError):
    pass


class FiniteLossWatch:
    """The first step at which each style's loss was not finite (NaN or inf), noted on the device
    without waiting for it; `check` (at log and checkpoint points) raises NonFiniteLoss naming the
    style and step. bf16 has no loss scaler to skip such a step: the weights are then NaN for good, and
    a checkpoint of them would only spread the damage to every resumed run."""

    def __init__(self, style_names: list[str], device):
        self.style_names = style_names
        self.first_bad_step = torch.full((len(style_names),), -1, dtype=torch.long, device=device)
        self.finite = torch.zeros((), device=device)

    def add(self, step: int, losses: dict[str, dict[str, torch.Tensor]]) -> None:
        """losses: StepRunner.step's, every style of the pack (one a step did not draw has a loss of 0: finite)."""
        totals = torch.stack([losses[name]["total"].float() if name in losses else self.finite for name in self.style_names])
        newly_bad = ~torch.isfinite(totals) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(newly_bad, torch.full_like(self.first_bad_step, step), self.first_bad_step)

    def check(self, world_size: int = 1) -> None:
        """Every rank must call this at the same step when world_size > 1 (it all-reduces)."""
        first = torch.where(self.first_bad_step < 0, torch.full_like(self.first_bad_step, 2**62), self.first_bad_step)
        if world_size > 1:
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
        bad = {name: int(step) for name, step in zip(self.style_names, first.tolist()) if step < 2**62}
        if bad:
            named = ", ".join(f"{name!r} at step {step}" for name, step in bad.items())
            raise NonFiniteLoss(
                f"the loss stopped being finite (NaN or inf) for style {named}; the pack stopped before checkpointing "
                "it. Lower that style's learning_rate or style_weight, or train with training.precision: fp32")


def make_optimizer(pack: nn.Module, styles: list[ResolvedStyle]) -> torch.optim.Adam:
    """Adam with one parameter group per style, so each style keeps its own learning rate. A family's
    styles share one for the network and one for their vectors (packs.check_families); styles joining a
    family train only their vectors (the network is frozen), at their vector_learning_rate, or their
    learning_rate when they have none."""
    if not isinstance(pack, StylePack):
        vector_rate = styles[0].vector_learning_rate or styles[0].learning_rate
        network = [parameter for parameter in pack.net.parameters() if parameter.requires_grad]
        return torch.optim.Adam([{"params": [pack.style_vectors], "lr": vector_rate},
                                 *([{"params": network, "lr": styles[0].learning_rate}] if network else [])])
    groups = [{"params": pack.nets[style.name].parameters(), "lr": style.learning_rate} for style in styles]
    return torch.optim.Adam(groups)


def resolve_precision(requested: str, device: torch.device) -> str:
    """'auto' -> bf16 on GPUs that compute it natively (Ampere and later), fp16 with loss scaling on
    older ones, fp32 on CPU (where AMP only slows). torch.cuda.is_bf16_supported() alone also says yes
    for GPUs that only emulate bf16 (a T4, a V100), where it is slower than fp16."""
    if device.type != "cuda":
        return "fp32"
    if requested != "auto":
        return requested
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
