"""The image transform network of Johnson et al. (2016), "Perceptual Losses for Real-Time Style Transfer".

Layout (paper's supplementary, Table 1): 9x9 conv, two stride-2 3x3 convs, five residual blocks, two
upsampling stages, 9x9 conv out. Instance norm (Ulyanov et al. 2016) replaces the paper's batch norm,
as every maintained implementation does: it gives visibly better stylisation.
"""

from __future__ import annotations

import torch
from torch import nn

from factory.settings import MODEL_WIDTHS

UPSAMPLE_MODES = ("nearest", "transposed")
FULL_WIDTH_CHANNELS = 32  # the first conv's channels at width 1.0; the paper's layers have 32, 64 and 128
# Reflection padding needs more pixels than it pads (4 for the 9x9 convs, and the image is halved
# twice): a side shorter than this runs enlarged by a whole factor and is averaged back afterwards.
MIN_SIDE = 16


class ConditionalInstanceNorm2d(nn.Module):
    """Instance norm whose scale and shift come with each image (Dumoulin, Shlens & Kudlur, ICLR 2017):
    a style family's network holds the convolutions, and each style is only these numbers for every
    normalised layer. Mixing two styles' numbers blends them; a batch may carry a different style per image."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor, scale_and_shift: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W); scale_and_shift (B, 2C): the scales, then the shifts."""
        scale, shift = scale_and_shift.to(x.dtype).split(self.channels, dim=1)
        return nn.functional.instance_norm(x) * scale[..., None, None] + shift[..., None, None]


def instance_norm(channels: int, conditional: bool) -> nn.Module:
    return ConditionalInstanceNorm2d(channels) if conditional else nn.InstanceNorm2d(channels, affine=True)


class StyledSequential(nn.Sequential):
    """nn.Sequential that hands each conditional norm its slice of the style (an iterator of (B, 2C)
    tensors, consumed in layer order); without one it is a plain nn.Sequential."""

    def forward(self, x: torch.Tensor, style_slices=None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ConditionalInstanceNorm2d):
                x = layer(x, next(style_slices))
            elif isinstance(layer, (StyledSequential, ResidualBlock)):
                x = layer(x, style_slices)
            else:
                x = layer(x)
        return x


class ConvLayer(nn.Sequential):
    """Reflection-padded convolution: zero padding leaves dark seams along the border."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__(
            nn.ReflectionPad2d(kernel_size // 2),
            nn.Conv2d(in_channels, out_channels, kernel_size, stride),
        )


class ConvNormReLU(StyledSequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, conditional: bool = False):
        super().__init__(
            ConvLayer(in_channels, out_channels, kernel_size, stride),
            instance_norm(out_channels, conditional),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """Two 3x3 convs with instance norm; ReLU only between them, none after the sum (Gross & Wilber)."""

    def __init__(self, channels: int, conditional: bool = False):
        super().__init__()
        self.body = StyledSequential(
            ConvLayer(channels, channels, 3),
            instance_norm(channels, conditional),
            nn.ReLU(inplace=True),
            ConvLayer(channels, channels, 3),
            instance_norm(channels, conditional),
        )

    def forward(self, x: torch.Tensor, style_slices=None) -> torch.Tensor:
        return x + self.body(x, style_slices)


class UpsampleConvNormReLU(StyledSequential):
    """Doubles the resolution.

    Default: nearest-neighbour upsampling, then a stride-1 conv. The paper's fractionally strided
    (transposed) convs overlap unevenly when the kernel size is not divisible by the stride, which
    paints a checkerboard over every output (Odena et al., "Deconvolution and Checkerboard
    Artifacts", Distill 2016); it is the most reported defect of fast-style-transfer ports.
    "transposed" keeps the paper's layer for comparison.
    """

    def __init__(self, in_channels: int, out_channels: int, mode: str, conditional: bool = False):
        if mode == "nearest":
            layers = [nn.Upsample(scale_factor=2, mode="nearest"), ConvLayer(in_channels, out_channels, 3)]
        elif mode == "transposed":
            layers = [nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1)]
        else:
            raise ValueError(f"unknown upsample mode {mode!r}; choose one of {UPSAMPLE_MODES}")
        super().__init__(*layers, instance_norm(out_channels, conditional), nn.ReLU(inplace=True))


class TransformNet(nn.Module):
    """Maps a (B, 3, H, W) RGB batch in 0..255 to a stylised batch of the same shape in [0, 255].

    H and W should be multiples of 4 (two stride-2 stages); other sizes are padded and cropped back,
    and images with a side under MIN_SIDE (a 1x1 icon, a 1000x2 strip) run enlarged and shrunk back.

    width scales every layer's channels (Magenta's alpha; Johnson's own repository ships half-width
    models): 0.5 has about a quarter of the multiply-adds (2.8 against 10.1 GMAC at 256x256).

    conditional: a style family's network (factory/family.py): every instance norm takes its scale and
    shift from a style vector of `style_size` numbers per image, passed to forward and core.
    output_norm: a conditional norm on the output convolution too, before the tanh, as Magenta's
    `transform` has (its last conv takes the normaliser like every other): 6 numbers more a style
    (3,206 at full width), so a style sets its own output contrast and colour balance. Families
    published before it (3,200 numbers) load without it (from_architecture).
    """

    def __init__(self, upsample: str = "nearest", width: float = 1.0, conditional: bool = False, output_norm: bool = False):
        if width not in MODEL_WIDTHS:
            raise ValueError(f"unknown network width {width!r}; choose one of {', '.join(map(str, MODEL_WIDTHS))}")
        super().__init__()
        self.upsample, self.width, self.conditional = upsample, width, conditional
        c = int(FULL_WIDTH_CHANNELS * width)  # (32, 64, 128) at full width
        self.layers = StyledSequential(
            ConvNormReLU(3, c, 9, conditional=conditional),
            ConvNormReLU(c, 2 * c, 3, stride=2, conditional=conditional),
            ConvNormReLU(2 * c, 4 * c, 3, stride=2, conditional=conditional),
            *(ResidualBlock(4 * c, conditional) for _ in range(5)),
            UpsampleConvNormReLU(4 * c, 2 * c, upsample, conditional),
            UpsampleConvNormReLU(2 * c, c, upsample, conditional),
            ConvLayer(c, 3, 9),  # no ReLU: the scaled tanh below bounds the output
        )
        if output_norm and not conditional:
            raise ValueError("output_norm is a style family's (conditional) network's; a single style's output conv has no norm")
        self.output_norm = ConditionalInstanceNorm2d(3) if output_norm else None
        # Each conditional norm's share of a style vector, in the order forward meets them.
        self.style_slice_sizes = [2 * m.channels for m in self.modules() if isinstance(m, ConditionalInstanceNorm2d)]

    @classmethod
    def from_architecture(cls, architecture: dict, conditional: bool = False) -> "TransformNet":
        """The network a published version's metadata describes ("architecture"); keys a version predates
        mean what they meant then: full width, nearest upsampling, and no output norm."""
        return cls(upsample=architecture.get("upsample", "nearest"), width=architecture.get("width", 1.0),
                   conditional=conditional, output_norm=conditional and architecture.get("output_norm", False))

    @property
    def style_size(self) -> int:
        """Numbers per style of a conditional network (3,206 at full width with the output norm, 3,200
        without): every norm's scales and shifts."""
        return sum(self.style_slice_sizes)

    def forward(self, images: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        return stylise_any_size(lambda batch: self.core(batch, style), images)

    def core(self, images: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """The network proper, for sides that are multiples of 4 and at least MIN_SIDE (what an ONNX
        export holds: factory/onnx_model.py). style: (B, style_size) for a conditional network."""
        if self.conditional != (style is not None):
            raise ValueError("a family's network needs a style vector per image; a single style's takes none")
        slices = iter(style.split(self.style_slice_sizes, dim=1)) if style is not None else None
        features = self.layers[:-1](images / 127.5 - 1.0, slices)  # inputs centred in [-1, 1] train faster than raw 0..255
        return self._output(features, next(slices) if self.output_norm is not None else None)  # (B, 3, H, W) in [0, 255]

    def _output(self, features: torch.Tensor, output_style: torch.Tensor | None) -> torch.Tensor:
        """The last conv and the scaled tanh, in fp32 under autocast: bf16's 8-bit mantissa would put the
        0..255 image the losses see in steps of 1 above 128, and TV and content gradients would carry
        that rounding. Outside autocast (fp32, or serving's fp16 weights) it runs as it is."""
        device_type = features.device.type
        if not torch.is_autocast_enabled(device_type):
            return 127.5 * (torch.tanh(self._output_conv(features, output_style)) + 1.0)
        with torch.autocast(device_type, enabled=False):
            return 127.5 * (torch.tanh(self._output_conv(features.float(), output_style)) + 1.0)

    def _output_conv(self, features: torch.Tensor, output_style: torch.Tensor | None) -> torch.Tensor:
        out = self.layers[-1](features)
        return out if self.output_norm is None else self.output_norm(out, output_style)


def stylise_any_size(core, images: torch.Tensor) -> torch.Tensor:
    """Runs `core` (a TransformNet's, or its ONNX export) on a batch of any size: a side under MIN_SIDE
    runs enlarged by a whole factor and is averaged back, other sides are reflect-padded to a multiple
    of 4 and cropped back."""
    shortest = min(images.shape[-2:])
    if shortest < MIN_SIDE:
        factor = -(-MIN_SIDE // shortest)  # ceil: the smallest whole factor that reaches MIN_SIDE
        enlarged = nn.functional.interpolate(images, scale_factor=factor, mode="nearest")
        return nn.functional.avg_pool2d(_padded_to_4(core, enlarged), factor)  # back to exactly (H, W)
    return _padded_to_4(core, images)


def _padded_to_4(core, images: torch.Tensor) -> torch.Tensor:
    height, width = images.shape[-2:]
    pad_bottom, pad_right = -height % 4, -width % 4
    if pad_bottom or pad_right:
        images = nn.functional.pad(images, (0, pad_right, 0, pad_bottom), mode="reflect")
    return core(images)[..., :height, :width]
