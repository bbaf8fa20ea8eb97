"""Flicker with and without the stability loss (loss.stability_weight, Gupta et al. 2017), over several
seeds, side by side with what it costs in the other figures.

    python bench/flicker.py                          # weights 0 and 1, seeds 0 1 2 (~20 min, 2 cores)
    python bench/flicker.py --weights 0 0.3 1 3 --seeds 0 --no-record   # a quick sweep

For each stability weight and seed it trains configs/tiny.yaml's styles (same steps, data and seed
otherwise) into a registry of its own, then measures each published model on the held-out photos of
bench/held_out_eval.py: flicker (factory/flicker.py: the stylised frames' mean change over the input
frames', on a slow pan and on a static camera with noise made from each photo), the quality figures
(colour shift, structure kept) and its own perceptual loss without the stability term, and the
training's images/s. Each weight is compared with weight 0 of the same seed; the spread is over seeds.
Figures go to bench/results/<device>-<date>.json under "flicker".
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

from bench import held_out_eval, results
from bench.families import absolute_settings
from bench.training_runs import train_into
from factory import flicker, images, registry
from factory.settings import load_config
from factory.stylize import stylise_frames

FIGURES = ("flicker_pan", "flicker_noise", "colour_shift", "structure_kept", "held_out_loss", "train_images_per_second")


def clips(side: int, frames: int) -> dict[str, list]:
    """{"pan": [...], "noise": [...]}: each held-out photo's two clips."""
    photos = [images.decode_rgb(path.read_bytes(), max_pixels=images.CONFIG_IMAGE_MAX_PIXELS) for path in held_out_eval.HELD_OUT_PHOTOS]
    return {"pan": [flicker.pan_clip(photo, side, frames) for photo in photos],
            "noise": [flicker.noisy_clip(photo, side, frames, seed=index) for index, photo in enumerate(photos)]}


def style_flicker(registry_uri: str, style: str, test_clips: dict[str, list]) -> dict[str, float]:
    """The style's mean flicker over the held-out photos' pan clips and noisy clips."""
    net, _ = registry.load_model(registry_uri, style)

    def stylise(frames):
        return stylise_frames(net, frames, torch.device("cpu"))

    return {f"flicker_{kind}": statistics.mean(flicker.flicker(stylise, clip) for clip in kind_clips) for kind, kind_clips in test_clips.items()}


def train_and_measure(config_path: str, folder: Path, weight: float, seed: int, steps: int | None, test_clips: dict) -> dict:
    """{style: figures} of the config's styles trained at this stability weight and seed."""
    config = absolute_settings(yaml.safe_load(Path(config_path).read_text()))
    path = folder / f"flicker-{weight}-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(config))
    label = f"stability{weight}-seed{seed}"
    trained = train_into(path, folder, label, steps, f"loss.stability_weight={weight}", f"training.seed={seed}")
    registry_uri = str(folder / f"registry-{label}")
    styles = {entry["name"]: Path(entry["image"]).read_bytes() for entry in config["styles"]}
    judged, _ = held_out_eval.judge(registry_uri, styles)
    figures = {}
    for style, values in trained.items():
        metadata = registry.read_metadata(registry_uri, style)
        figures[style] = {**judged[style], **style_flicker(registry_uri, style, test_clips),
                          "train_images_per_second": metadata["throughput"]["images_per_second_per_style"],
                          "final_losses": metadata["final_losses"]}
        print(f"  stability {weight:g} seed {seed} {style}: " + ", ".join(f"{key} {figures[style][key]:.3f}" for key in FIGURES), flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "tiny.yaml"))
    parser.add_argument("--steps", type=int, help="training steps (default: the config's)")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0], help="stability weights; 0 (off) is always included")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training.seed of each run (at least three for a claim)")
    parser.add_argument("--side", type=int, default=256, help="the clips' frame side in pixels")
    parser.add_argument("--frames", type=int, default=12, help="frames per clip")
    parser.add_argument("--keep", type=Path, help="keep the registries and checkpoints in this folder")
    parser.add_argument("--no-record", action="store_true", help="print only; write nothing to bench/results/")
    args = parser.parse_args(argv)
    weights = sorted({0.0, *args.weights})
    folder = args.keep or Path(tempfile.mkdtemp(prefix="flicker-"))
    folder.mkdir(parents=True, exist_ok=True)
    styles = [style.name for style in load_config(args.config).styles]
    test_clips = clips(args.side, args.frames)
    input_change = {kind: statistics.mean(flicker.mean_frame_change(clip) for clip in kind_clips) for kind, kind_clips in test_clips.items()}

    runs = {weight: {seed: train_and_measure(args.config, folder, weight, seed, args.steps, test_clips) for seed in args.seeds} for weight in weights}
    # Each figure as the styles' mean, spread over the seeds; and each weight over weight 0 of the same seed.
    figures = {weight: {key: held_out_eval.spread([statistics.mean(runs[weight][seed][style][key] for style in styles) for seed in args.seeds])
                        for key in FIGURES} for weight in weights}
    share_of_off = {weight: {key: held_out_eval.spread([statistics.mean(runs[weight][seed][style][key] / runs[0.0][seed][style][key]
                                                                        for style in styles) for seed in args.seeds])
                             for key in FIGURES} for weight in weights}

    photos = held_out_eval.photo_names()
    print(f"\non {results.device_name()}, torch {torch.__version__}; training: {args.config}{f' at {args.steps} steps' if args.steps else ''}, "
          f"seeds {', '.join(map(str, args.seeds))}; clips of {args.frames} frames at {args.side} px from {len(photos)} held-out photos "
          f"(input frame change: pan {input_change['pan']:.2f}, noise {input_change['noise']:.2f})")
    print("the styles' mean, mean ± sd over the seeds; in brackets, over stability 0 of the same seed")
    for weight in weights:
        print(f"stability {weight:<5g}" + "  ".join(f"{key} {figures[weight][key]['mean']:.3f} ± {figures[weight][key]['sd']:.3f} "
                                                 f"({share_of_off[weight][key]['mean']:.2f}x)" for key in FIGURES))
    if not args.no_record:
        recorded = {"config": Path(args.config).name, "steps": args.steps, "seeds": args.seeds, "weights": weights,
                    "noise_sd": load_config(args.config).loss.stability_noise, "clip": {"side": args.side, "frames": args.frames,
                    "pan_pixels_per_frame": flicker.PAN_PIXELS_PER_FRAME, "camera_noise_sd": flicker.CAMERA_NOISE_SD},
                    "input_frame_change": input_change, "held_out_photos": photos,
                    "runs": {str(weight): runs[weight] for weight in weights},
                    "figures": {str(weight): figures[weight] for weight in weights},
                    "share_of_off": {str(weight): share_of_off[weight] for weight in weights}}
        print(f"recorded in {results.record('flicker', recorded)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
