"""Network widths side by side in one run (model.width): what a narrower network costs in quality and
gains in CPU stylising speed.

    python bench/widths.py                      # trains the default run at widths 1.0, 0.5, 0.25 (~15 min, 2 cores)
    python bench/widths.py --steps 20           # a quick look

For each width it trains configs/tiny.yaml's styles with the same steps, seed and data into a registry of
its own (a temporary folder; --keep keeps it), and reads each published model's quality figures
(factory/quality.py: colour shift and structure kept on the preview photo) and final loss. Then it times
stylising on this CPU, batch 1, median of --repeats: ONNX Runtime at each width (what CPU serving runs)
against pytorch/examples' fast_neural_style network in eager PyTorch (bench/cpu_stylise.py), and counts
each width's multiply-adds at 256x256. Figures go to bench/results/<device>-<date>.json under "widths".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import torch

from bench import results
from bench.cpu_stylise import ExamplesTransformerNet, median_ms
from bench.training_runs import train_into
from factory import onnx_model
from factory.settings import MODEL_WIDTHS, load_config
from factory.transform_net import TransformNet


def multiply_adds(net: torch.nn.Module, side: int) -> int:
    """The convolutions' multiply-adds for one side x side image (the rest of the network is noise)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        kernel = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]  # in/groups x kh x kw
        total += output.numel() * kernel

    hooks = [module.register_forward_hook(count) for module in net.modules() if isinstance(module, torch.nn.Conv2d)]
    with torch.inference_mode():
        net(torch.zeros(1, 3, side, side))
    for hook in hooks:
        hook.remove()
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "tiny.yaml"))
    parser.add_argument("--steps", type=int, help="training steps (default: the config's)")
    parser.add_argument("--sides", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="keep the registries and checkpoints in this folder")
    parser.add_argument("--no-record", action="store_true", help="print only; write nothing to bench/results/")
    args = parser.parse_args(argv)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="widths-"))
    styles = [style.name for style in load_config(args.config).styles]

    quality = {width: train_into(args.config, folder, str(width), args.steps, f"model.width={width}") for width in MODEL_WIDTHS}

    torch.manual_seed(0)
    examples = ExamplesTransformerNet().eval()
    latency = []
    for side in args.sides:
        image = torch.rand(1, 3, side, side) * 255
        row = {"side": side, "examples_torch_ms": median_ms(examples, image, args.repeats)}
        for width in MODEL_WIDTHS:
            exported = onnx_model.OnnxTransformNet(onnx_model.export(TransformNet(width=width).eval()))
            row[f"onnxruntime_ms_width_{width}"] = median_ms(exported, image, args.repeats)
        latency.append(row)
    gmac = {width: multiply_adds(TransformNet(width=width).eval(), 256) / 1e9 for width in MODEL_WIDTHS}

    print(f"\non {results.device_name()}, torch {torch.__version__} with {torch.get_num_threads()} threads; "
          f"training: {args.config}{f' at {args.steps} steps' if args.steps else ''}, the preview photo's figures")
    print(f"{'width':>6} {'GMAC@256':>9} " + " ".join(f"{style[:12] + ' col/str':>22}" for style in styles)
          + "  vs full width (mean)" + "".join(f"  {side}px ORT ms (x examples)" for side in args.sides))
    full = quality[1.0]
    for width in MODEL_WIDTHS:
        cells = " ".join(f"{quality[width][s]['colour_shift']:>14.2f} / {quality[width][s]['structure_kept']:.2f}" for s in styles)
        kept = statistics.mean(min(quality[width][s][key] / full[s][key], 1.0) for s in styles for key in ("colour_shift", "structure_kept"))
        speed = "".join(f"  {row[f'onnxruntime_ms_width_{width}']:>10.0f} ({row['examples_torch_ms'] / row[f'onnxruntime_ms_width_{width}']:.2f}x)"
                        for row in latency)
        print(f"{width:>6} {gmac[width]:>9.2f} {cells}  {kept:>18.0%}{speed}")
    print("col/str: colour shift toward the painting / structure of the photo kept (factory/quality.py); vs full width: "
          "the mean of each figure's ratio to full width's, capped at 100%; x examples: pytorch/examples' eager network's "
          "time over ours in ONNX Runtime (goal: 2x or more at a width within 10% of full width's figures)")
    if not args.no_record:
        figures = {"config": Path(args.config).name, "steps": args.steps, "threads": torch.get_num_threads(), "repeats": args.repeats,
                   "quality": {str(width): figures for width, figures in quality.items()}, "latency": latency,
                   "gmac_at_256": {str(width): value for width, value in gmac.items()}}
        print(f"recorded in {results.record('widths', figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
