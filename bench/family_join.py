"""What adding a fifth style costs: joining a published family (its vector alone trains) against training
the style's own network, side by side in one run.

    python bench/family_join.py              # configs/tiny.yaml's settings: about 9 min on 2 cores
    python bench/family_join.py --steps 20   # a quick look

Trains bench/families.py's four styles as one family for S steps (a registry of its own, in a
temporary folder), then woman-with-hat-matisse as a network of its own for S steps, and as a style
joining that family (factory/family_additions.py: the family's network frozen, only the new style's
3,200 numbers train) twice: for S steps at the config's learning rate, and for S/5 steps (the issue's
budget: a fifth of training it alone) at a learning rate of 0.1. It prints each one's training
seconds (and their share of the separate network's), final loss and quality figures (colour shift,
structure kept). Figures go to bench/results/<device>-<date>.json under "family_join".
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import torch
import yaml

from bench import results
from bench.families import FAMILY_SETTINGS, STYLES, bench_run
from bench.training_runs import train_into

FIFTH = "woman-with-hat-matisse"
JOIN_LEARNING_RATE = 0.1  # a vector of 3,200 numbers takes a far larger step than a network's weights (measured: 1e-3, 1e-2, 1e-1)


def with_steps(config: Path, folder: Path, family_steps: int, **fifth: object) -> Path:
    """The same config (same file name: it names the family) with S steps for the family; with `fifth`,
    the fifth style added with its own settings (steps, learning_rate: a joining style's own)."""
    settings = yaml.safe_load(config.read_text())
    settings["training"]["steps"] = family_steps
    if fifth:
        settings["styles"].append({"name": FIFTH, "image": str(REPO_ROOT / "data" / "samples" / "styles" / f"{FIFTH}.jpg"), **fifth})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / config.name
    path.write_text(yaml.safe_dump(settings))
    return path


def alone(config: Path, folder: Path) -> Path:
    settings = yaml.safe_load(config.read_text())
    settings["styles"] = [style for style in settings["styles"] if style["name"] == FIFTH]
    path = folder / "fifth-alone.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def join(config: Path, folder: Path, label: str) -> dict:
    """The fifth style joining a copy of the published family (each join starts from the same family)."""
    shutil.copytree(folder / "registry-family", folder / f"registry-{label}")
    return train_into(config, folder, label, None, *FAMILY_SETTINGS)[FIFTH]


def main(argv: list[str] | None = None) -> int:
    args, folder, config, steps = bench_run(__doc__, argv, "the family's steps, and the separate fifth's", "family-join-")
    family = train_into(with_steps(config, folder / "family", steps), folder, "family", None, *FAMILY_SETTINGS)
    separate = train_into(alone(with_steps(config, folder / "alone", steps, steps=steps), folder), folder, "fifth-alone", None)[FIFTH]
    runs = {
        f"joining, {steps} steps at the config's learning rate": join(with_steps(config, folder / "join-same", steps, steps=steps), folder,
                                                                      "join-same"),
        f"joining, {steps // 5} steps at learning rate {JOIN_LEARNING_RATE:g}": join(
            with_steps(config, folder / "join-fifth", steps, steps=steps // 5, learning_rate=JOIN_LEARNING_RATE), folder, "join-fifth"),
    }
    print(f"\non {results.device_name()}, torch {torch.__version__}; {Path(args.config).name}'s settings; a family of {len(STYLES)} "
          f"trained for S = {steps} steps in {family[STYLES[0]]['train_seconds']:.0f} s; the fifth style, {FIFTH}:")
    print(f"{'':<46} {'seconds':>8} {'(x own)':>8} {'final loss':>11} {'colour':>7} {'structure':>10}")
    for label, figures in {f"its own network, {steps} steps": separate, **runs}.items():
        print(f"{label:<46} {figures['train_seconds']:>8.0f} {figures['train_seconds'] / separate['train_seconds']:>7.0%} "
              f"{figures['final_loss']:>11.4g} {figures['colour_shift']:>7.2f} {figures['structure_kept']:>10.2f}")
    if not args.no_record:
        figures = {"config": Path(args.config).name, "steps": steps, "family_styles": list(STYLES), "fifth": FIFTH,
                   "family_train_seconds": family[STYLES[0]]["train_seconds"], "separate": separate, "joined": runs,
                   "join_share_of_separate_seconds": {label: run["train_seconds"] / separate["train_seconds"] for label, run in runs.items()},
                   "join_loss_over_separate": {label: run["final_loss"] / separate["final_loss"] for label, run in runs.items()}}
        print(f"recorded in {results.record('family_join', figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
