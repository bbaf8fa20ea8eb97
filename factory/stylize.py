"""Stylise images with published models: a few photos here, or a whole folder or bucket on Ray.

    python -m factory.stylize --registry data/registry --style starry_night photo.jpg -o out.jpg
    python -m factory.stylize --style the_scream a.jpg b.png -o stylised/     # a folder for many
    python -m factory.stylize --style mosaic --style udnie photos/ -o stylised/          # a bulk job (Ray Data)
    python -m factory.stylize --style mosaic s3://bucket/photos/ -o s3://bucket/out/    # on a cluster: ray job submit

Photos given one by one are stylised in this process at full size unless --max-side asks for less.
One folder or s3:// prefix is a bulk job (factory/bulk_stylize.py): results go to
<output>/<style>/<relative name>, clips among the photos are stylised as video (factory/bulk_videos.py),
a job run again skips what is written, and unusable files are listed in <output>/_stylise_report.json.
A clip given alone is stylised here (factory/video.py). On a CPU, --cpu-precision picks a style's int8
copy where it has one (factory/onnx_int8.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

if __package__ in (None, ""):
    # the repository, not this script's folder: its onnx_model.py would shadow ONNX Runtime's own
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np
import torch

from factory import images, registry, storage, video

OUTPUT_FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp"}
MAX_INPUT_PIXELS = 400_000_000  # far past any camera; a decompression bomb is still refused


def stylise(net: torch.nn.Module, image: "images.Image.Image", device: torch.device) -> "images.Image.Image":
    with torch.inference_mode():
        output = net(images.to_tensor(image).unsqueeze(0).to(device))[0]
    return images.to_image(output)


def load_style_net(registry_uri: str, metadata: dict, device: torch.device, threads: int | None = None, cpu_precision: str = "auto"):
    """The version's network as the device runs it best: on a CPU its ONNX export in ONNX Runtime (the
    fast path; `threads` for its session; in int8 where cpu_precision says so and the version has an int8
    copy: factory/onnx_int8.py), else, or for a version without an export, torch."""
    onnx = (registry.load_onnx_net(registry_uri, metadata, cpu_precision, **({"threads": threads} if threads else {}))
            if device.type == "cpu" else None)
    return onnx or registry.load_net(registry_uri, metadata).to(device)


def stylise_frames(net, frames: np.ndarray, device: torch.device) -> np.ndarray:
    """(B, H, W, 3) uint8 -> the same, stylised: a batch of one size (video frames, a bulk job's photos)."""
    with torch.inference_mode():
        batch = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float()  # (B, 3, H, W)
        return net(batch).clamp(0, 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="images to stylise (JPEG, PNG, WebP, ...), or one folder or s3:// prefix of them")
    parser.add_argument("-o", "--output", required=True, help="output file (one input, one style) or folder (or s3:// prefix for a bulk job)")
    parser.add_argument("--style", required=True, action="append", dest="styles",
                        help="published style name; repeat it (or separate names with commas) for several")
    parser.add_argument("--registry", default="data/registry", help="registry folder or s3:// prefix (default: data/registry)")
    parser.add_argument("--max-side", type=int, help="downscale so the longer side is at most this many pixels")
    parser.add_argument("--device", help="torch device; default: cuda if present (a bulk job: if the cluster has a GPU), else cpu")
    parser.add_argument("--cpu-precision", choices=("auto", "fp32", "int8"), default="auto",
                        help="on a CPU, run a style's int8 copy where it has one (int8), never (fp32), or where the cores have "
                             "int8 units (auto, the default)")
    bulk = parser.add_argument_group("a bulk job (one folder or s3:// prefix as input)")
    bulk.add_argument("--workers", type=int, help="model actors at most (default: as many as the cluster's CPUs or GPUs give)")
    bulk.add_argument("--cpus-per-worker", type=float, help="CPUs (threads) of each CPU model actor (default 1)")
    bulk.add_argument("--gpus-per-worker", type=float, help="GPUs of each GPU model actor, 0.5 for two on a GPU (default 1)")
    bulk.add_argument("--batch-size", type=int, help="photos of one size per forward pass (default 8)")
    bulk.add_argument("--max-skipped-fraction", type=float, help="stop when more than this fraction of the files is unusable (default 0.01)")
    bulk.add_argument("--quality", type=int, help="JPEG and WebP quality of the results (default 95)")
    return parser, parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    styles = [name.strip() for names in args.styles for name in names.split(",") if name.strip()]
    if len(args.inputs) == 1 and (storage.is_s3(args.inputs[0]) or Path(args.inputs[0]).is_dir()):
        return bulk_job(args, styles)
    if storage.is_s3(str(args.output)):
        parser.error("an s3:// output needs one folder or s3:// prefix as input (a bulk job)")
    output = Path(args.output)
    many = len(args.inputs) > 1 or len(styles) > 1 or output.is_dir()
    formats = video.OUTPUT_CODECS if video.is_video(args.inputs[0]) else OUTPUT_FORMATS
    if not many and output.suffix.lower() not in formats:
        parser.error(f"output {output} needs an extension among {', '.join(formats)}, or must be an existing folder")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    nets = {}
    try:
        for style in styles:
            metadata = registry.read_metadata(args.registry, style)
            nets[style] = load_style_net(args.registry, metadata, device, cpu_precision=args.cpu_precision)
            if metadata.get("loss_network", {}).get("random_weights"):
                print(f"warning: {style!r} was trained with a random loss network; expect no real style", file=sys.stderr)
    except (registry.ModelNotFound, ValueError) as error:
        print(f"error: {error}; available styles: {', '.join(registry.list_styles(args.registry)) or 'none'}", file=sys.stderr)
        return 2
    if many:
        output.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in map(Path, args.inputs):
        if video.is_video(path):
            failures += stylise_video_file(path, nets, output if not many else None, output, device, args.max_side or 0)
            continue
        try:
            image = images.decode_rgb(path.read_bytes(), max_pixels=MAX_INPUT_PIXELS)
        except (OSError, images.ImageRejected) as error:
            print(f"skipping {path}: {error}", file=sys.stderr)
            failures += 1
            continue
        if args.max_side:
            image = images.fit_within(image, args.max_side)
        for style, net in nets.items():
            target = output / f"{path.stem}-{style}.jpg" if many else output
            result = stylise(net, image, device)
            target.write_bytes(images.encode(result, OUTPUT_FORMATS.get(target.suffix.lower(), "jpeg"), quality=95))
            runtime = f"onnxruntime {net.precision}" if not isinstance(net, torch.nn.Module) else f"torch on {device}"  # ONNX Runtime: the CPU fast path
            print(f"{path} -> {target} ({result.width}x{result.height}, {runtime})")
    return 1 if failures else 0


def stylise_video_file(path: Path, nets: dict, target: Path | None, folder: Path, device: torch.device, max_side: int) -> int:
    """A clip in every style asked for (factory/video.py); returns 1 when it could not be done."""
    for style, net in nets.items():
        destination = target or folder / f"{path.stem}-{style}.mp4"
        try:
            summary = video.stylise_video(lambda frames: stylise_frames(net, frames, device), path, destination, max_side=max_side)
        except video.VideoRejected as error:
            print(f"skipping {path}: {error}", file=sys.stderr)
            return 1
        print(f"{path} -> {destination} ({summary['frames']} frames of {summary['width']}x{summary['height']} at "
              f"{summary['rate']} fps, {summary['audio_streams']} sound stream(s) copied, {summary['seconds']:.0f} s)")
    return 0


def bulk_job(args: argparse.Namespace, styles: list[str]) -> int:
    """One folder or s3:// prefix in: a Ray Data job over every photo under it (factory/bulk_stylize.py)."""
    from factory import bulk_stylize  # Ray only here: stylising a few photos needs none

    try:
        settings = bulk_stylize.settings_from_args(args, styles)  # bad flags are refused before Ray starts
        for style in styles:
            registry.read_metadata(settings.registry, style)
        bulk_stylize.start_ray()
        if args.device is None and bulk_stylize.ray.cluster_resources().get("GPU"):
            settings = dataclasses.replace(settings, device="cuda")
        report = bulk_stylize.run(settings)
    except (registry.ModelNotFound, ValueError, FileNotFoundError) as error:
        available = f"; available styles: {', '.join(registry.list_styles(args.registry)) or 'none'}" if isinstance(error, registry.ModelNotFound) else ""
        print(f"error: {error}{available}", file=sys.stderr)
        return 2
    except bulk_stylize.JobStopped as error:
        print(f"stopped: {error}", file=sys.stderr)
        return 1
    skipped = report["skipped"]
    print(f"done: {report['outputs_written']} written, {report['outputs_already_there']} already there, "
          f"{skipped['count']} file(s) skipped{' ' + str(skipped['by_reason']) if skipped['count'] else ''}; report: "
          f"{storage.join(settings.output, bulk_stylize.REPORT_NAME)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
