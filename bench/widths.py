"""Network widths side by side (model.width), over several seeds: what a narrower network costs in quality
and gains in CPU stylising speed, each runtime compared with itself.

    python bench/widths.py                      # the default run at widths 1.0, 0.5, 0.25, seeds 0 1 2 (~25 min, 2 cores)
    python bench/widths.py --steps 20 --seeds 0 --no-record   # a quick look

For each width and seed it trains configs/tiny.yaml's styles with the same steps and data into a registry
of its own (a temporary folder; --keep keeps it), and reads each published model's quality figures
on the held-out photos of bench/held_out_eval.py (colour shift and structure kept, factory/quality.py, and
its own perceptual loss, each the mean over the photos). Then it times stylising on this CPU,
batch 1, median of --repeats: our network at each width in ONNX Runtime (what CPU serving runs) and in
eager PyTorch, and pytorch/examples' fast_neural_style network in eager PyTorch (bench/cpu_stylise.py).
So a width's share (the same runtime at full width over it) and the runtime's share (eager over ONNX
Runtime at the same width) come apart from the architecture's (examples' eager over ours eager). It
counts each width's multiply-adds at 256x256. Figures go to bench/results/<device>-<date>.json under "widths".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile

import yaml
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import torch

from bench import held_out_eval, results
from bench.families import absolute_settings
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


def train_width_run(config_path: str, folder: Path, width: float, seed: int, steps: int | None) -> tuple[str, dict]:
    """(folder/registry-<width>-seed<seed>, {style: figures}): the config's styles trained at this width and seed."""
    config = absolute_settings(yaml.safe_load(Path(config_path).read_text()))
    path = folder / f"widths-{width}-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(config))
    label = f"{width}-seed{seed}"
    return str(folder / f"registry-{label}"), train_into(path, folder, label, steps, f"model.width={width}", f"training.seed={seed}")


def train_width(config_path: str, folder: Path, width: float, seed: int, steps: int | None) -> dict:
    """{style: figures} of the config's styles at this width and seed, judged on every held-out photo."""
    registry_uri, figures = train_width_run(config_path, folder, width, seed, steps)
    styles = {entry["name"]: Path(entry["image"]).read_bytes() for entry in absolute_settings(yaml.safe_load(Path(config_path).read_text()))["styles"]}
    judged, _ = held_out_eval.judge(registry_uri, styles)
    return {style: {**values, **judged[style]} for style, values in figures.items()}


def latency_row(side: int, repeats: int) -> dict:
    """Milliseconds for one side x side image: ours at every width in ONNX Runtime and in eager torch, and examples' eager."""
    torch.manual_seed(0)
    image = torch.rand(1, 3, side, side) * 255
    row = {"side": side, "examples_torch_ms": median_ms(ExamplesTransformerNet().eval(), image, repeats)}
    for width in MODEL_WIDTHS:
        net = TransformNet(width=width).eval()
        row[f"onnxruntime_ms_width_{width}"] = median_ms(onnx_model.OnnxTransformNet(onnx_model.export(net)), image, repeats)
        row[f"torch_ms_width_{width}"] = median_ms(net, image, repeats)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "tiny.yaml"))
    parser.add_argument("--steps", type=int, help="training steps (default: the config's)")
    parser.add_argument("--sides", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training.seed of each run (at least three for a claim)")
    parser.add_argument("--keep", type=Path, help="keep the registries and checkpoints in this folder")
    parser.add_argument("--no-record", action="store_true", help="print only; write nothing to bench/results/")
    args = parser.parse_args(argv)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="widths-"))
    folder.mkdir(parents=True, exist_ok=True)
    styles = [style.name for style in load_config(args.config).styles]

    runs = {width: {seed: train_width(args.config, folder, width, seed, args.steps) for seed in args.seeds} for width in MODEL_WIDTHS}
    latency = [latency_row(side, args.repeats) for side in args.sides]
    gmac = {width: multiply_adds(TransformNet(width=width).eval(), 256) / 1e9 for width in MODEL_WIDTHS}
    # Each seed's width against the full width of the same seed: the styles' mean ratio, then its spread over the seeds.
    shares = {width: {key: held_out_eval.spread([statistics.mean(runs[width][seed][style][key] / runs[1.0][seed][style][key] for style in styles)
                                                 for seed in args.seeds])
                      for key in ("colour_shift", "structure_kept", "held_out_loss")} for width in MODEL_WIDTHS}

    photos = held_out_eval.photo_names()
    print(f"\non {results.device_name()}, torch {torch.__version__} with {torch.get_num_threads()} threads; training: {args.config}"
          f"{f' at {args.steps} steps' if args.steps else ''}, seeds {', '.join(map(str, args.seeds))}; figures on {len(photos)} held-out photos")
    print("quality as a share of full width's of the same seed, mean ± sd over the seeds (colour shift / structure kept / held-out loss):")
    for width in MODEL_WIDTHS:
        print(f"{width:>6} {gmac[width]:>6.2f} GMAC@256  " + " / ".join(f"{shares[width][key]['mean']:.0%} ± {shares[width][key]['sd']:.0%}"
                                                                for key in ("colour_shift", "structure_kept", "held_out_loss")))
    print("stylising one image, ms (median of repeats): each runtime against itself at full width, and eager over ONNX Runtime")
    for row in latency:
        print(f"{row['side']} px: examples eager {row['examples_torch_ms']:.0f} ms, ours eager at full width {row['torch_ms_width_1.0']:.0f} ms")
        for width in MODEL_WIDTHS:
            ort, eager = row[f"onnxruntime_ms_width_{width}"], row[f"torch_ms_width_{width}"]
            print(f"    width {width:<5} ORT {ort:>6.0f} ms ({row['onnxruntime_ms_width_1.0'] / ort:.2f}x full width's)   eager {eager:>6.0f} ms "
                  f"({row['torch_ms_width_1.0'] / eager:.2f}x full width's)   runtime: eager / ORT {eager / ort:.2f}x")
    if not args.no_record:
        figures = {"config": Path(args.config).name, "steps": args.steps, "seeds": args.seeds, "threads": torch.get_num_threads(),
                   "repeats": args.repeats, "held_out_photos": photos, "runs": {str(width): runs[width] for width in MODEL_WIDTHS},
                   "share_of_full_width": {str(width): shares[width] for width in MODEL_WIDTHS}, "latency": latency,
                   "gmac_at_256": {str(width): value for width, value in gmac.items()}}
        print(f"recorded in {results.record('widths', figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
