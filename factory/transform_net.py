"""The image transform network of Johnson et al. (2016), "Perceptual Losses for Real-Time Style Transfer".

Layout (paper's supplementary, Table 1): 9x9 conv, two stride-2 3x3 convs, five residual blocks, two
upsampling stages, 9x9 conv out. Instance norm (Ulyanov et al. 2016) replaces the paper's batch norm,
as every maintained implementation does: it gives visibly better stylisation.
"""

from __future__ import annotations

import torch
from torch import nn

UPSAMPLE_MODES = ("nearest", "transposed")
# Reflection padding needs more pixels than it pads (4 for the 9x9 convs, and the image is halved
# twice): a side shorter than this runs enlarged by a whole factor and is averaged back afterwards.
MIN_SIDE = 16


class ConvLayer(nn.Sequential):
    """Reflection-padded convolution: zero padding leaves dark seams along the border."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__(
            nn.ReflectionPad2d(kernel_size // 2),
            nn.Conv2d(in_channels, out_channels, kernel_size, stride),
        )


class ConvNormReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__(
            ConvLayer(in_channels, out_channels, kernel_size, stride),
            nn.InstanceNorm2d(out_channels, affine=True),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """Two 3x3 convs with instance norm; ReLU only between them, none after the sum (Gross & Wilber)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            ConvLayer(channels, channels, 3),
            nn.InstanceNorm2d(channels, affine=True),
            nn.ReLU(inplace=True),
            ConvLayer(channels, channels, 3),
            nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UpsampleConvNormReLU(nn.Sequential):
    """Doubles the resolution.

    Default: nearest-neighbour upsampling, then a stride-1 conv. The paper's fractionally strided
    (transposed) convs overlap unevenly when the kernel size is not divisible by the stride, which
    paints a checkerboard over every output (Odena et al., "Deconvolution and Checkerboard
    Artifacts", Distill 2016); it is the most reported defect of fast-style-transfer ports.
    "transposed" keeps the paper's layer for comparison.
    """

    def __init__(self, in_channels: int, out_channels: int, mode: str):
        if mode == "nearest":
            layers = [nn.Upsample(scale_factor=2, mode="nearest"), ConvLayer(in_channels, out_channels, 3)]
        elif mode == "transposed":
            layers = [nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1)]
        else:
            raise ValueError(f"unknown upsample mode {mode!r}; choose one of {UPSAMPLE_MODES}")
        super().__init__(*layers, nn.InstanceNorm2d(out_channels, affine=True), nn.ReLU(inplace=True))


class TransformNet(nn.Module):
    """Maps a (B, 3, H, W) RGB batch in 0..255 to a stylised batch of the same shape in [0, 255].

    H and W should be multiples of 4 (two stride-2 stages); other sizes are padded and cropped back,
    and images with a side under MIN_SIDE (a 1x1 icon, a 1000x2 strip) run enlarged and shrunk back.
    """

    def __init__(self, upsample: str = "nearest"):
        super().__init__()
        self.upsample = upsample
        self.layers = nn.Sequential(
            ConvNormReLU(3, 32, 9),
            ConvNormReLU(32, 64, 3, stride=2),
            ConvNormReLU(64, 128, 3, stride=2),
            *(ResidualBlock(128) for _ in range(5)),
            UpsampleConvNormReLU(128, 64, upsample),
            UpsampleConvNormReLU(64, 32, upsample),
            ConvLayer(32, 3, 9),  # no norm or ReLU: the scaled tanh below bounds the output
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return stylise_any_size(self.core, images)

    def core(self, images: torch.Tensor) -> torch.Tensor:
        """The network proper, for sides that are multiples of 4 and at least MIN_SIDE (what an ONNX
        export holds: factory/onnx_model.py)."""
        features = self.layers[:-1](images / 127.5 - 1.0)  # inputs centred in [-1, 1] train faster than raw 0..255
        return self._output(features)  # (B, 3, H, W) in [0, 255]

    def _output(self, features: torch.Tensor) -> torch.Tensor:
        """The last conv and the scaled tanh, in fp32 under autocast: bf16's 8-bit mantissa would put the
        0..255 image the losses see in steps of 1 above 128, and TV and content gradients would carry
        that rounding. Outside autocast (fp32, or serving's fp16 weights) it runs as it is."""
        device_type = features.device.type
        if not torch.is_autocast_enabled(device_type):
            return 127.5 * (torch.tanh(self.layers[-1](features)) + 1.0)
        with torch.autocast(device_type, enabled=False):
            return 127.5 * (torch.tanh(self.layers[-1](features.float())) + 1.0)


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
