"""How good is a published model? Its one forward pass against direct optimisation of the same loss.

    python bench/quality.py                                   # the default run's models, CPU, minutes
    python bench/quality.py --size 256 --iterations 500       # the paper's settings (a GPU helps)

For each published style and each held-out photo (photos the model never trained on), the script
computes the model's perceptual loss (the style's own loss network, normalisation, layers and weights,
from its metadata) and then minimises that same loss over the photo's pixels directly (Gatys et al.),
starting from the photo, with L-BFGS. It prints, per style:
  ratio      the model's loss / the optimised loss after --iterations (Johnson et al.: about 1.1-1.25)
  worth      how many L-BFGS iterations one forward pass is worth: the first iteration whose loss is
             at or below the model's (Johnson et al. report 50-100)
and the colour and structure figures (factory/quality.py) of the model's output on the held-out
photos. Figures go to bench/results/<device>-<date>.json under "quality".
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import torch

from bench import results
from factory import images, quality, registry, storage
from factory.loss_network import LossNetwork
from factory.settings import LossSettings, ResolvedStyle, load_config
from factory.style_pack import PerceptualObjective
from factory.vgg_weights import RANDOM, TORCHVISION_DOWNLOAD, VGGWeights, load_vgg19, random_vgg19

# Classic style-transfer test photos, none of them among the training set's bundled samples. Two by
# default: 100 L-BFGS iterations of a 128 px photo take about 75 s on 2 CPU cores.
HELD_OUT = [REPO_ROOT.parent / "shared" / "data" / "content" / name for name in ("golden_gate.jpg", "tubingen.jpg")]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "tiny.yaml"),
                        help="the config the models were trained from: it names the style images and the registry")
    parser.add_argument("--registry", help="registry to read (default: the config's)")
    parser.add_argument("--styles", help="comma-separated styles (default: every published style of the config)")
    parser.add_argument("--photos", nargs="+", type=Path,
                        help="held-out photos (default: golden_gate.jpg and tubingen.jpg from ../shared/data/content)")
    parser.add_argument("--size", type=int, default=128, help="long side of each photo, in pixels (the paper: 256)")
    parser.add_argument("--iterations", type=int, default=100, help="L-BFGS iterations of the direct optimisation")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-record", action="store_true", help="print only; do not write bench/results/")
    return parser.parse_args(argv)


def loss_network_for(source: str) -> VGGWeights:
    """The loss network a model was trained with, from the source its metadata names."""
    if source == RANDOM:
        return random_vgg19()  # seeded: the same network every time (without load_vgg19's banner per style)
    if source == TORCHVISION_DOWNLOAD:
        return load_vgg19([TORCHVISION_DOWNLOAD])
    return load_vgg19([source.split(":", 1)[1]])  # "matconvnet:<path>" or "torchvision-state-dict:<path>"


def style_as_trained(metadata: dict, image_bytes: bytes) -> tuple[LossSettings, ResolvedStyle]:
    """The loss settings and style exactly as the recipe in the model's metadata records them."""
    recipe = metadata["recipe"]
    settings = LossSettings(**{**recipe["loss"], "style_layers": tuple(recipe["loss"]["style_layers"])})
    return settings, ResolvedStyle(**recipe["style"], image_bytes=image_bytes)  # the recipe is the style minus its bytes


def photo_tensor(path: Path, size: int) -> tuple[torch.Tensor, "images.Image.Image"]:
    photo = images.fit_within(images.decode_rgb(path.read_bytes(), max_pixels=images.CONFIG_IMAGE_MAX_PIXELS), size)
    photo = photo.crop((0, 0, photo.width - photo.width % 4, photo.height - photo.height % 4))
    return images.to_tensor(photo).unsqueeze(0), photo


def optimised_losses(objective: PerceptualObjective, photo: torch.Tensor, iterations: int) -> list[float]:
    """The loss at the photo and after each L-BFGS iteration: [iterations + 1] values."""
    pixels = photo.clone(memory_format=torch.contiguous_format).requires_grad_(True)  # L-BFGS views grads flat
    # Relative losses over 0..255 pixels have gradients of 1e-5: L-BFGS then takes steps too small for
    # its curvature test (y.s > 1e-10) and never learns the scale. It minimises the loss divided by its
    # initial largest gradient instead (the same minimiser); the losses recorded are the true ones.
    total, _ = objective(photo, pixels.unsqueeze(0))
    (gradient,) = torch.autograd.grad(total, pixels)
    scale = 1.0 / max(float(gradient.abs().max()), 1e-12)
    optimiser = torch.optim.LBFGS([pixels], lr=1.0, max_iter=1, history_size=50, line_search_fn="strong_wolfe",
                                  tolerance_grad=0.0, tolerance_change=0.0)

    def closure():
        optimiser.zero_grad()
        total, _ = objective(photo, pixels.unsqueeze(0))
        (total * scale).backward()
        return total * scale

    def current_loss() -> float:
        with torch.no_grad():
            return float(objective(photo, pixels.unsqueeze(0))[0])

    history = [float(total.detach())]
    for _ in range(iterations):
        optimiser.step(closure)
        history.append(current_loss())  # the true loss where this iteration left the pixels
    return history


def measure_style(name: str, reg: str, image_bytes: bytes, photos: list[Path], args) -> dict:
    net, metadata = registry.load_model(reg, name)
    if hashlib.sha256(image_bytes).hexdigest() != metadata["style_image_sha256"]:
        raise ValueError(f"style {name!r}: the config's image is not the one the model was trained on; pass the matching --config")
    settings, style = style_as_trained(metadata, image_bytes)
    weights = loss_network_for(metadata["loss_network"]["source"])
    device = torch.device(args.device)
    loss_network = LossNetwork(weights, [settings.content_layer, *settings.style_layers]).to(device)
    objective = PerceptualObjective(loss_network, settings, [style], device)
    style_image = images.decode_rgb(image_bytes, max_pixels=images.CONFIG_IMAGE_MAX_PIXELS)
    net = net.to(device)
    rows = []
    for path in photos:
        photo, photo_image = photo_tensor(path, args.size)
        photo = photo.to(device)
        with torch.no_grad():
            output = net(photo)
            model_loss = float(objective(photo, output.unsqueeze(0))[0])
        started = time.perf_counter()
        history = optimised_losses(objective, photo, args.iterations)
        worth = next((iteration for iteration, value in enumerate(history) if value <= model_loss), None)
        print(f"    {name} on {path.name}: model {model_loss:.4g}, photo {history[0]:.4g}, after {args.iterations} "
              f"iterations {history[-1]:.4g} ({time.perf_counter() - started:.0f} s)", flush=True)
        rows.append({
            "photo": path.name,
            "model_loss": model_loss,
            "photo_loss": history[0],
            "optimised_loss": history[-1],
            "ratio": model_loss / history[-1],
            "iterations_worth": worth,
            "optimise_seconds": round(time.perf_counter() - started, 1),
            **quality.figures(images.to_image(output[0].cpu()), photo_image, style_image),
        })
    worths = [row["iterations_worth"] if row["iterations_worth"] is not None else args.iterations + 1 for row in rows]
    return {
        "version": metadata["version"],
        "loss_network": metadata["loss_network"]["source"],
        "normalisation": settings.normalisation,
        "trained_steps": metadata["steps"],
        "ratio": statistics.mean(row["ratio"] for row in rows),
        "iterations_worth_median": statistics.median(worths),
        "colour_shift": statistics.mean(row["colour_shift"] for row in rows),
        "structure_kept": statistics.mean(row["structure_kept"] for row in rows),
        "photos": rows,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    config = load_config(args.config)
    reg = args.registry or config.registry
    photos = args.photos or [path for path in HELD_OUT if path.exists()]
    if not photos:
        print("error: no held-out photos: pass --photos with a few photos the models did not train on", file=sys.stderr)
        return 2
    absent = [str(path) for path in photos if not path.is_file()]
    if absent:
        print(f"error: no photo at {', '.join(absent)}: pass --photos with existing image files", file=sys.stderr)
        return 2
    published = set(registry.list_styles(reg))
    images_by_style = {style.name: style.image for style in config.styles}
    wanted = args.styles.split(",") if args.styles else [name for name in images_by_style if name in published]
    unknown = [name for name in wanted if name not in images_by_style]
    if unknown:
        print(f"error: --styles names {', '.join(unknown)}, not in {args.config}; it has {', '.join(images_by_style)}", file=sys.stderr)
        return 2
    missing = [name for name in wanted if name not in published]
    if missing or not wanted:
        print(f"error: no published model for {', '.join(missing) or 'any style of the config'} in {reg!r}; "
              "train first: python factory/train_all.py --config ...", file=sys.stderr)
        return 2
    print(f"{len(wanted)} style(s) x {len(photos)} held-out photo(s) at {args.size} px, {args.iterations} L-BFGS "
          f"iterations each, on {results.device_name()}", flush=True)
    figures = {}
    for name in wanted:
        try:
            figures[name] = measure_style(name, reg, storage.read_bytes(images_by_style[name]), photos, args)
        except (ValueError, FileNotFoundError) as error:  # a mismatched config, missing weights or photos
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"  {name}: done", flush=True)

    print(f"\n{'style':<20} {'loss network':<14} {'norm':<10} {'steps':>6} {'ratio':>7} {'worth':>7} {'colour':>7} {'struct':>7}")
    for name, row in figures.items():
        worth = row["iterations_worth_median"]
        worth_text = f">{args.iterations}" if worth > args.iterations else f"{worth:g}"
        print(f"{name:<20} {row['loss_network'][:14]:<14} {row['normalisation']:<10} {row['trained_steps']:>6} "
              f"{row['ratio']:>7.3f} {worth_text:>7} {row['colour_shift']:>7.2f} {row['structure_kept']:>7.2f}")
    print("ratio: model loss / loss after direct optimisation (lower is better, 1.0 = as good); worth: L-BFGS iterations "
          "one forward pass is worth (median over photos)")
    if not args.no_record:
        path = results.record("quality", {"size": args.size, "iterations": args.iterations, "photos": [p.name for p in photos],
                                          "config": Path(args.config).name, "styles": figures})
        print(f"recorded in {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
