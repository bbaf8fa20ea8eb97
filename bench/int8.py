"""int8 against fp32 in ONNX Runtime at each network width: milliseconds, and the quality figures on
held-out photos, over several seeds.

    python bench/int8.py                       # widths 1.0, 0.5, 0.25 x seeds 0 1 2 (~20 min, 2 cores)
    python bench/int8.py --keep /tmp/widths    # reuse (or keep) the trained registries: the labels are bench/widths.py's

For each width and seed it trains configs/tiny.yaml's styles (bench/widths.py's runs), quantises each
published model's ONNX export (factory/onnx_int8.py: static, calibrated on the config's content photos,
never the held-out ones) and stylises the held-out photos of bench/held_out_eval.py with both: colour
shift and structure kept (factory/quality.py) of each, their relative change, and the mean pixel
difference. Then it times both on this CPU, batch 1, median of --repeats, side by side in one process.
Figures go to bench/results/<device>-<date>.json under "int8".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import torch

from bench import held_out_eval, results, widths
from bench.cpu_stylise import median_ms
from bench.families import absolute_settings
from factory import images, onnx_int8, onnx_model, quality, registry
from factory.settings import MODEL_WIDTHS, load_config

FIGURES = ("colour_shift", "structure_kept")


def trained_registry(config_path: str, folder: Path, width: float, seed: int, steps: int | None) -> str:
    """The registry of the config's styles at this width and seed: bench/widths.py's run, or one already in folder."""
    existing = folder / f"registry-{width}-seed{seed}"
    return str(existing) if existing.exists() else widths.train_width_run(config_path, folder, width, seed, steps)[0]


def calibration_photos(config_path: str) -> list:
    """The config's content photos (data.source), as the export's input: what the quantiser calibrates on."""
    source = Path(absolute_settings(yaml.safe_load(Path(config_path).read_text()))["data"]["source"])
    return [onnx_int8.calibration_batch(images.decode_rgb(path.read_bytes(), max_pixels=images.CONFIG_IMAGE_MAX_PIXELS))
            for path in sorted(source.iterdir()) if path.is_file()]


def compare(registry_uri: str, style: str, painting, photos: list, calibration: list) -> dict:
    """The style's fp32 and int8 exports on every held-out photo: their figures (means over the photos) and pixel difference."""
    metadata = registry.read_metadata(registry_uri, style)
    fp32_bytes = registry.load_onnx(registry_uri, metadata)
    fp32 = onnx_model.OnnxTransformNet(fp32_bytes)
    int8 = onnx_model.OnnxTransformNet(onnx_int8.quantise(fp32_bytes, calibration))
    figures = {"fp32": [], "int8": []}
    differences = []
    with torch.inference_mode():
        for tensor, photo in photos:
            outputs = {"fp32": fp32(tensor)[0], "int8": int8(tensor)[0]}
            differences.append(float((outputs["fp32"].clamp(0, 255) - outputs["int8"].clamp(0, 255)).abs().mean()))
            for precision, output in outputs.items():
                figures[precision].append(quality.figures(images.to_image(output), photo, painting))
    means = {precision: {key: statistics.mean(values[key] for values in per_photo) for key in FIGURES} for precision, per_photo in figures.items()}
    change = {key: abs(means["int8"][key] - means["fp32"][key]) / max(abs(means["fp32"][key]), 1e-9) for key in FIGURES}
    return {**means, "relative_change": change, "mean_pixel_difference": statistics.mean(differences),
            "within_tolerance": max(change.values()) <= onnx_int8.INT8_TOLERANCE}


def latency_row(registry_uri: str, style: str, calibration: list, side: int, repeats: int) -> dict:
    fp32_bytes = registry.load_onnx(registry_uri, registry.read_metadata(registry_uri, style))
    image = torch.rand(1, 3, side, side) * 255
    fp32 = median_ms(onnx_model.OnnxTransformNet(fp32_bytes), image, repeats)
    int8 = median_ms(onnx_model.OnnxTransformNet(onnx_int8.quantise(fp32_bytes, calibration)), image, repeats)
    return {"side": side, "fp32_ms": fp32, "int8_ms": int8, "speedup": fp32 / int8}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "tiny.yaml"))
    parser.add_argument("--steps", type=int, help="training steps (default: the config's)")
    parser.add_argument("--sides", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training.seed of each run (at least three for a claim)")
    parser.add_argument("--keep", type=Path, help="keep the registries and checkpoints in this folder; runs already there are reused")
    parser.add_argument("--no-record", action="store_true", help="print only; write nothing to bench/results/")
    args = parser.parse_args(argv)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="int8-"))
    folder.mkdir(parents=True, exist_ok=True)
    config = absolute_settings(yaml.safe_load(Path(args.config).read_text()))
    paintings = {entry["name"]: images.decode_rgb(Path(entry["image"]).read_bytes(), max_pixels=images.CONFIG_IMAGE_MAX_PIXELS)
                 for entry in config["styles"]}
    styles = [style.name for style in load_config(args.config).styles]
    calibration = calibration_photos(args.config)
    photos = [held_out_eval.photo_tensor(path, held_out_eval.PICTURE_SIDE) for path in held_out_eval.HELD_OUT_PHOTOS]

    registries = {width: {seed: trained_registry(args.config, folder, width, seed, args.steps) for seed in args.seeds} for width in MODEL_WIDTHS}
    runs = {width: {seed: {style: compare(registries[width][seed], style, paintings[style], photos, calibration) for style in styles}
                    for seed in args.seeds} for width in MODEL_WIDTHS}
    # Each seed's largest relative change over its styles, spread over the seeds; and the share of models within tolerance.
    worst_change = {width: {key: held_out_eval.spread([max(runs[width][seed][style]["relative_change"][key] for style in styles)
                                                       for seed in args.seeds]) for key in FIGURES} for width in MODEL_WIDTHS}
    within = {width: sum(runs[width][seed][style]["within_tolerance"] for seed in args.seeds for style in styles) / (len(args.seeds) * len(styles))
              for width in MODEL_WIDTHS}
    latency = {width: [latency_row(registries[width][args.seeds[0]], styles[0], calibration, side, args.repeats) for side in args.sides]
               for width in MODEL_WIDTHS}

    print(f"\non {results.device_name()}, ONNX Runtime with {torch.get_num_threads()} threads; {args.config}"
          f"{f' at {args.steps} steps' if args.steps else ''}, seeds {', '.join(map(str, args.seeds))}; "
          f"figures on {len(photos)} held-out photos, calibrated on {len(calibration)} content photos")
    for width in MODEL_WIDTHS:
        print(f"width {width}: " + ", ".join(f"{row['side']} px fp32 {row['fp32_ms']:.0f} ms int8 {row['int8_ms']:.0f} ms ({row['speedup']:.2f}x)"
                                             for row in latency[width]))
        print("    worst relative change of a style's figure, mean ± sd over seeds: "
              + ", ".join(f"{key} {worst_change[width][key]['mean']:.1%} ± {worst_change[width][key]['sd']:.1%}" for key in FIGURES)
              + f"; models within {onnx_int8.INT8_TOLERANCE:.0%}: {within[width]:.0%}")
    if not args.no_record:
        figures = {"config": Path(args.config).name, "steps": args.steps, "seeds": args.seeds, "threads": torch.get_num_threads(),
                   "repeats": args.repeats, "tolerance": onnx_int8.INT8_TOLERANCE, "held_out_photos": held_out_eval.photo_names(),
                   "calibration_photos": len(calibration), "runs": {str(width): runs[width] for width in MODEL_WIDTHS},
                   "worst_relative_change": {str(width): worst_change[width] for width in MODEL_WIDTHS},
                   "share_within_tolerance": {str(width): within[width] for width in MODEL_WIDTHS},
                   "latency": {str(width): latency[width] for width in MODEL_WIDTHS}}
        print(f"recorded in {results.record('int8', figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
