"""CPU stylising side by side in one run: our network in eager PyTorch, the same network in ONNX
Runtime (what CPU serving runs), and pytorch/examples' fast_neural_style TransformerNet in eager
PyTorch, re-created here (random weights; the architectures' cost, not their look).

    python bench/cpu_stylise.py                  # 512 and 1024, batch 1, median of 5

Prints milliseconds per image, ONNX Runtime's speed-up over each eager network and its largest
difference from torch's output (0..255 units). Figures go to bench/results/ as JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from bench import results
from factory import onnx_model
from factory.transform_net import TransformNet


class ExamplesConvLayer(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride):
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x):
        return self.conv(self.pad(x))


class ExamplesResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1, self.in1 = ExamplesConvLayer(channels, channels, 3, 1), nn.InstanceNorm2d(channels, affine=True)
        self.conv2, self.in2 = ExamplesConvLayer(channels, channels, 3, 1), nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x):
        return x + self.in2(self.conv2(torch.relu(self.in1(self.conv1(x)))))


class ExamplesUpsampleConvLayer(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, upsample):
        super().__init__()
        self.upsample = upsample
        self.conv = ExamplesConvLayer(in_channels, out_channels, kernel_size, 1)

    def forward(self, x):
        if self.upsample:
            x = nn.functional.interpolate(x, mode="nearest", scale_factor=self.upsample)
        return self.conv(x)


class ExamplesTransformerNet(nn.Module):
    """pytorch/examples, fast_neural_style/neural_style/transformer_net.py, layer for layer."""

    def __init__(self):
        super().__init__()
        self.conv1, self.in1 = ExamplesConvLayer(3, 32, 9, 1), nn.InstanceNorm2d(32, affine=True)
        self.conv2, self.in2 = ExamplesConvLayer(32, 64, 3, 2), nn.InstanceNorm2d(64, affine=True)
        self.conv3, self.in3 = ExamplesConvLayer(64, 128, 3, 2), nn.InstanceNorm2d(128, affine=True)
        self.residuals = nn.Sequential(*(ExamplesResidualBlock(128) for _ in range(5)))
        self.deconv1, self.in4 = ExamplesUpsampleConvLayer(128, 64, 3, 2), nn.InstanceNorm2d(64, affine=True)
        self.deconv2, self.in5 = ExamplesUpsampleConvLayer(64, 32, 3, 2), nn.InstanceNorm2d(32, affine=True)
        self.deconv3 = ExamplesConvLayer(32, 3, 9, 1)

    def forward(self, x):
        y = torch.relu(self.in1(self.conv1(x)))
        y = torch.relu(self.in2(self.conv2(y)))
        y = torch.relu(self.in3(self.conv3(y)))
        y = self.residuals(y)
        y = torch.relu(self.in4(self.deconv1(y)))
        y = torch.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


def median_ms(run, image: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        run(image)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(image)
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    ours = TransformNet().eval()
    examples = ExamplesTransformerNet().eval()
    onnx_net = onnx_model.OnnxTransformNet(onnx_model.export(ours))
    rows = []
    for side in args.sides:
        image = torch.rand(1, 3, side, side) * 255
        with torch.inference_mode():
            difference = (onnx_net(image) - ours(image)).abs().max().item()
        row = {"side": side, "ours_torch_ms": median_ms(ours, image, args.repeats),
               "ours_onnxruntime_ms": median_ms(onnx_net, image, args.repeats),
               "examples_torch_ms": median_ms(examples, image, args.repeats), "max_abs_difference": difference}
        rows.append(row)
    print(f"on {results.device_name()}, torch {torch.__version__} with {torch.get_num_threads()} threads, batch 1, "
          f"median of {args.repeats}")
    print(f"{'side':>5} {'ours, torch':>12} {'ours, ORT':>10} {'examples, torch':>16} {'ORT vs ours':>12} {'ORT vs examples':>16} {'max |diff|':>11}")
    for row in rows:
        print(f"{row['side']:>5} {row['ours_torch_ms']:>10.0f}ms {row['ours_onnxruntime_ms']:>8.0f}ms {row['examples_torch_ms']:>14.0f}ms "
              f"{row['ours_torch_ms'] / row['ours_onnxruntime_ms']:>11.2f}x {row['examples_torch_ms'] / row['ours_onnxruntime_ms']:>15.2f}x "
              f"{row['max_abs_difference']:>11.4f}")
    print(f"recorded in {results.record('cpu_stylise', {'threads': torch.get_num_threads(), 'repeats': args.repeats, 'rows': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
