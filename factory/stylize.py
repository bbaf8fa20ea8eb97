"""Stylise images locally with a published model, no server needed.

    python -m factory.stylize --registry data/registry --style starry_night photo.jpg -o out.jpg
    python -m factory.stylize --style the_scream a.jpg b.png -o stylised/     # a folder for many

Images are stylised at full size unless --max-side asks for less; the only limit is memory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from factory import images, registry

OUTPUT_FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp"}
MAX_INPUT_PIXELS = 400_000_000  # far past any camera; a decompression bomb is still refused


def stylise(net: torch.nn.Module, image: "images.Image.Image", device: torch.device) -> "images.Image.Image":
    with torch.inference_mode():
        output = net(images.to_tensor(image).unsqueeze(0).to(device))[0]
    return images.to_image(output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path, help="images to stylise (JPEG, PNG, WebP, ...)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output file (one input) or folder")
    parser.add_argument("--style", required=True, help="published style name")
    parser.add_argument("--registry", default="data/registry", help="registry folder or s3:// prefix (default: data/registry)")
    parser.add_argument("--max-side", type=int, help="downscale so the longer side is at most this many pixels")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: cuda if present)")
    args = parser.parse_args(argv)

    many = len(args.inputs) > 1 or args.output.is_dir()
    if not many and args.output.suffix.lower() not in OUTPUT_FORMATS:
        parser.error(f"output {args.output} needs an extension among {', '.join(OUTPUT_FORMATS)}, or must be an existing folder")
    device = torch.device(args.device)
    try:
        metadata = registry.read_metadata(args.registry, args.style)
        onnx = registry.load_onnx_net(args.registry, metadata) if device.type == "cpu" else None
        net = onnx or registry.load_net(args.registry, metadata).to(device)
    except (registry.ModelNotFound, ValueError) as error:
        print(f"error: {error}; available styles: {', '.join(registry.list_styles(args.registry)) or 'none'}", file=sys.stderr)
        return 2
    if metadata.get("loss_network", {}).get("random_weights"):
        print(f"warning: {args.style!r} was trained with a random loss network; expect no real style", file=sys.stderr)
    runtime = "onnxruntime" if onnx else f"torch on {device}"  # ONNX Runtime: the CPU fast path, for versions with an export
    if many:
        args.output.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in args.inputs:
        try:
            image = images.decode_rgb(path.read_bytes(), max_pixels=MAX_INPUT_PIXELS)
        except (OSError, images.ImageRejected) as error:
            print(f"skipping {path}: {error}", file=sys.stderr)
            failures += 1
            continue
        if args.max_side:
            image = images.fit_within(image, args.max_side)
        target = args.output / f"{path.stem}-{args.style}.jpg" if many else args.output
        result = stylise(net, image, device)
        target.write_bytes(images.encode(result, OUTPUT_FORMATS.get(target.suffix.lower(), "jpeg"), quality=95))
        print(f"{path} -> {target} ({result.width}x{result.height}, {runtime})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
