"""Style families against a network per style, side by side in one run (training.pack_mode).

    python bench/families.py                 # 4 styles at configs/tiny.yaml's settings: about 30 min on 2 cores
    python bench/families.py --steps 20      # a quick look (a family needs two draws a style: 8 steps at least)

Trains the same four styles three ways, each into a registry of its own (a temporary folder; --keep
keeps it): four separate networks for S steps (configs/tiny.yaml's, or --steps), one family for 4*S
steps of one style each (equal training compute: one style's forward and backward per style-step) and
one family for S steps (a quarter of it). For every style it reads the published model's quality
figures on the preview photo (factory/quality.py: colour shift, structure kept) and final loss, and
gives each family style's figures as a share of the separate network's, and how different the styles'
previews are from each other (preview_distinctness), and bench/quality.py's loss ratio (each model's
loss on a held-out photo over what direct optimisation of that loss reaches). Then it loads 16 styles both
ways from the registry, as serving does, and counts the weights they hold in memory, scaled to a
catalogue of 1,000. Figures go to bench/results/<device>-<date>.json under "families".
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

import torch
import yaml

from bench import results
from bench.training_runs import train_into
from factory import registry

STYLES = ("starry_night", "the_scream", "udnie", "shipwreck")
CATALOGUE, FAMILY_SIZE = 1_000, 16
FAMILY_SETTINGS = ("training.pack_mode=family", "training.family_styles_per_step=1")  # Magenta's: one style a step


def write_config(folder: Path, base: str) -> Path:
    config = yaml.safe_load(Path(base).read_text())
    config["styles"] = [{"name": name, "image": str(REPO_ROOT / "data" / "samples" / "styles" / f"{name}.jpg")} for name in STYLES]
    config["training"]["styles_per_pack"] = len(STYLES)
    for key in ("registry", "preview_image"):
        config[key] = str(REPO_ROOT / config[key])
    config["data"]["source"] = str(REPO_ROOT / config["data"]["source"])
    path = folder / "families.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def preview_distinctness(registry_uri: str) -> float:
    """How different the styles' previews of one photo are from each other: the mean absolute pixel
    difference (0..255) over every pair. Colour shift and structure kept judge each style alone; a
    family whose styles all learnt one look scores well on both, and low here."""
    import itertools

    import numpy as np
    from PIL import Image

    previews = {style: np.asarray(Image.open(io.BytesIO(registry.read_file(registry_uri, style, registry.PREVIEW_FILE))).convert("RGB"), float)
                for style in STYLES}
    return float(statistics.mean(np.abs(previews[a] - previews[b]).mean() for a, b in itertools.combinations(STYLES, 2)))


def loss_ratios(registries: dict[str, str], config: Path, size: int = 128, iterations: int = 50) -> dict[str, dict[str, float]]:
    """{run: {style: bench/quality.py's ratio}}: each model's perceptual loss on a held-out photo over the
    loss that direct optimisation of the same objective reaches (L-BFGS). The objective is one per style
    (the runs share the style's image, loss settings and loss network), so each style is optimised once."""
    from bench import quality as quality_bench
    from factory.loss_network import LossNetwork
    from factory.style_pack import PerceptualObjective

    photo_path = quality_bench.HELD_OUT[0]
    photo, _ = quality_bench.photo_tensor(photo_path, size)
    images_by_style = {entry["name"]: entry["image"] for entry in yaml.safe_load(config.read_text())["styles"]}
    ratios = {label: {} for label in registries}
    for style in STYLES:
        objectives = {}
        for label, registry_uri in registries.items():
            metadata = registry.read_metadata(registry_uri, style)
            settings, resolved = quality_bench.style_as_trained(metadata, Path(images_by_style[style]).read_bytes())
            weights = quality_bench.loss_network_for(metadata["loss_network"]["source"])
            objectives[label] = PerceptualObjective(LossNetwork(weights, [settings.content_layer, *settings.style_layers]), settings, [resolved],
                                                    torch.device("cpu"))
        with torch.no_grad():  # one objective indeed: every run scores the unstylised photo alike
            at_photo = {label: float(objective(photo, photo.unsqueeze(0))[0]) for label, objective in objectives.items()}
        if max(at_photo.values()) - min(at_photo.values()) > 1e-4 * max(at_photo.values()):
            raise RuntimeError(f"{style}: the runs' objectives differ ({at_photo}); optimise each run's own")
        optimised = quality_bench.optimised_losses(next(iter(objectives.values())), photo, iterations)[-1]
        for label, registry_uri in registries.items():
            net = registry.load_model(registry_uri, style)[0]
            with torch.no_grad():
                ratios[label][style] = float(objectives[label](photo, net(photo).unsqueeze(0))[0]) / optimised
        print(f"  {style}: loss ratios " + ", ".join(f"{label} {ratios[label][style]:.3f}" for label in registries), flush=True)
    return ratios


def resident_weight_bytes(models: list) -> int:
    """Bytes of the distinct tensors the loaded models hold (a family's shared network counted once)."""
    seen = {}
    for model in models:
        for tensor in [*model.parameters(), *model.buffers()]:
            seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    return sum(seen.values())


def serving_memory(folder: Path) -> dict:
    """16 styles as separate networks and as one family, loaded from a registry as a pool replica loads them."""
    from serving import publish_random_family, publish_random_style

    root = folder / "registry-memory"
    names = [f"style-{index:02d}" for index in range(FAMILY_SIZE)]
    for index, name in enumerate(names):
        publish_random_style(root, f"own-{name}", seed=index)
    publish_random_family(root, [f"fam-{name}" for name in names], family="memory")
    separate = resident_weight_bytes([registry.load_model(str(root), f"own-{name}")[0] for name in names])
    family_models = [registry.load_model(str(root), f"fam-{name}")[0] for name in names]
    family, family_network = resident_weight_bytes(family_models), resident_weight_bytes([family_models[0].net])
    per_separate, per_family_style = separate / FAMILY_SIZE, (family - family_network) / FAMILY_SIZE
    families = -(-CATALOGUE // FAMILY_SIZE)
    return {"styles_loaded": FAMILY_SIZE, "separate_bytes": separate, "family_bytes": family,
            "per_separate_style_bytes": per_separate, "family_network_bytes": family_network, "per_family_style_bytes": per_family_style,
            f"catalogue_{CATALOGUE}_separate_mb": CATALOGUE * per_separate / 2**20,
            f"catalogue_{CATALOGUE}_families_of_{FAMILY_SIZE}_mb": (families * family_network + CATALOGUE * per_family_style) / 2**20}


def bench_run(description: str, argv: list[str] | None, steps_help: str, prefix: str) -> tuple[argparse.Namespace, Path, Path, int]:
    """The command line the families benches share, and what it sets up: (args, the run's folder, the
    config with the four styles written into it, S)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "tiny.yaml"), help="settings to train with (its styles are replaced)")
    parser.add_argument("--steps", type=int, help=f"S: {steps_help} (default: the config's training.steps)")
    parser.add_argument("--keep", type=Path, help="keep the registries and checkpoints in this folder")
    parser.add_argument("--no-record", action="store_true", help="print only; write nothing to bench/results/")
    args = parser.parse_args(argv)
    folder = args.keep or Path(tempfile.mkdtemp(prefix=prefix))
    folder.mkdir(parents=True, exist_ok=True)
    config = write_config(folder, args.config)
    return args, folder, config, args.steps or yaml.safe_load(config.read_text())["training"]["steps"]


def main(argv: list[str] | None = None) -> int:
    args, folder, config, steps = bench_run(__doc__, argv, "each separate network's steps", "families-")
    runs = {
        "separate": train_into(config, folder, "separate", steps),
        "family_equal_compute": train_into(config, folder, "family-equal", len(STYLES) * steps, *FAMILY_SETTINGS),
        "family_quarter_compute": train_into(config, folder, "family-quarter", steps, *FAMILY_SETTINGS),
    }
    folders = {"separate": "separate", "family_equal_compute": "family-equal", "family_quarter_compute": "family-quarter"}
    distinctness = {label: preview_distinctness(str(folder / f"registry-{folders[label]}")) for label in runs}
    ratios = loss_ratios({label: str(folder / f"registry-{folders[label]}") for label in runs}, config)
    memory = serving_memory(folder)

    print(f"\non {results.device_name()}, torch {torch.__version__}; {Path(args.config).name}'s settings, S = {steps} steps; "
          "figures of each style's preview (colour shift / structure kept), and the family's as a share of the separate network's")
    print(f"{'style':<14} " + " ".join(f"{label:>28}" for label in runs))
    shares = {label: [] for label in runs}
    for style in STYLES:
        cells = []
        for label, figures in runs.items():
            mine, theirs = figures[style], runs["separate"][style]
            share = [mine[key] / theirs[key] for key in ("colour_shift", "structure_kept")]
            shares[label] += share
            cells.append(f"{mine['colour_shift']:.2f} / {mine['structure_kept']:.2f} ({share[0]:.0%}, {share[1]:.0%})")
        print(f"{style:<14} " + " ".join(f"{cell:>28}" for cell in cells))
    print(f"{'mean share':<14} " + " ".join(f"{statistics.mean(values):>28.0%}" for values in shares.values()))
    print(f"{'distinctness':<14} " + " ".join(f"{value:>28.1f}" for value in distinctness.values()))
    print(f"{'loss ratio':<14} " + " ".join(f"{statistics.mean(values.values()):>28.3f}" for values in ratios.values()))
    print(f"{'train seconds':<14} " + " ".join(f"{statistics.mean(f['train_seconds'] for f in figures.values()):>28.0f}" for figures in runs.values()))
    print(f"serving, weights held for {FAMILY_SIZE} styles: separate {memory['separate_bytes'] / 2**20:.1f} MiB, one family "
          f"{memory['family_bytes'] / 2**20:.2f} MiB ({memory['per_family_style_bytes'] / 1024:.1f} KiB a style beside the family's "
          f"{memory['family_network_bytes'] / 2**20:.1f} MiB); {CATALOGUE} styles: "
          f"{memory[f'catalogue_{CATALOGUE}_separate_mb']:,.0f} MiB separate, "
          f"{memory[f'catalogue_{CATALOGUE}_families_of_{FAMILY_SIZE}_mb']:,.0f} MiB as families of {FAMILY_SIZE}")
    if not args.no_record:
        figures = {"config": Path(args.config).name, "steps": steps, "styles": list(STYLES), "runs": runs,
                   "mean_share_of_separate": {label: statistics.mean(values) for label, values in shares.items()},
                   "preview_distinctness": distinctness, "loss_ratio": ratios,
                   "loss_ratio_note": "bench/quality.py's ratio on golden_gate.jpg at 128 px, 50 L-BFGS iterations",
                   "serving_memory": memory}
        print(f"recorded in {results.record('families', figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
