"""What adding a fifth style costs: joining a published family (its vector alone trains) against training
the style's own network, as a grid of learning rate x steps, over several seeds, on held-out photos.

    python bench/family_join.py                   # configs/tiny.yaml's settings, seeds 0 1 2: about 15 min on 2 cores
    python bench/family_join.py --steps 20 --seeds 0 1 --no-record   # a quick look

Per seed: bench/families.py's four styles trained as one family for S steps (the config's, or --steps);
then, in one run, woman-with-hat-matisse as a network of its own for S steps, and as a style joining
that family (factory/family_additions.py: the family's network frozen, only the new style's 3,206
numbers train) once for every cell of the grid: learning rates x steps (--rates, --fractions of S).
Each join is a copy of the fifth style under a name of its own, in a pack of its own, so every cell
starts from the same family. Each model is judged by its own perceptual loss on the held-out photos
(bench/held_out_eval.py), not by its last training steps' loss, and that loss is given as a ratio to
its own network's loss of the same seed, beside the join's training seconds as a share of its own
network's. The table gives mean ± sd over the seeds, and the frontier: for each time budget, the best
cell. Figures go to bench/results/<device>-<date>.json under "family_join".
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
import yaml

from bench import held_out_eval, results
from bench.families import STYLES, absolute_settings, style_image
from bench.training_runs import train_into
from factory.settings import load_config

FIFTH = "woman-with-hat-matisse"
GOAL_LOSS_RATIO, GOAL_TIME_SHARE = 1.10, 0.20  # the same held-out loss within 10%, in at most a fifth of its own network's time


def cell_name(rate: float, steps: int) -> str:
    return f"join-lr{rate:g}-s{steps}".replace(".", "p")


def write_config(folder: Path, base: dict, name: str, styles: list[dict], seed: int, steps: int) -> Path:
    config = absolute_settings(base)
    config["training"] = {**config["training"], "steps": steps, "seed": seed}
    config["styles"] = styles
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def one_seed(folder: Path, base: dict, steps: int, grid: list[tuple[float, int]], seed: int) -> dict:
    """{"own": figures, "cells": {name: figures}, "family_seconds": ...} for one seed."""
    family = [{"name": name, "image": str(style_image(name)), "family": "joinbench"} for name in STYLES]
    label = f"seed{seed}"
    family_run = train_into(write_config(folder, base, f"family-{label}", family, seed, steps), folder, label, None)
    fifth = str(style_image(FIFTH))
    joining = [{"name": cell_name(rate, cell_steps), "image": fifth, "family": "joinbench", "steps": cell_steps, "learning_rate": rate}
               for rate, cell_steps in grid]
    own = {"name": "own", "image": fifth}
    published = train_into(write_config(folder, base, f"join-{label}", [*family, *joining, own], seed, steps), folder, label, None)
    registry_uri = str(folder / f"registry-{label}")
    judged, _ = held_out_eval.judge(registry_uri, {name: Path(fifth).read_bytes() for name in ["own", *(entry["name"] for entry in joining)]})
    own_figures = {**published["own"], **judged["own"]}
    cells = {}
    for (rate, cell_steps), entry in zip(grid, joining):
        figures = {**published[entry["name"]], **judged[entry["name"]], "learning_rate": rate, "steps": cell_steps}
        figures["loss_ratio"] = figures["held_out_loss"] / own_figures["held_out_loss"]
        figures["time_share"] = figures["train_seconds"] / own_figures["train_seconds"]
        cells[entry["name"]] = figures
    best = min(cells.values(), key=lambda cell: cell["loss_ratio"])
    print(f"  seed {seed}: own network {own_figures['held_out_loss']:.4g} in {own_figures['train_seconds']:.0f} s; best join "
          f"lr {best['learning_rate']:g} x {best['steps']} steps: x{best['loss_ratio']:.3f} in {best['time_share']:.0%} of the time", flush=True)
    return {"own": own_figures, "cells": cells, "family_seconds": family_run[STYLES[0]]["train_seconds"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "tiny.yaml"), help="settings to train with (its styles are replaced)")
    parser.add_argument("--steps", type=int, help="S: the family's and the fifth's own network's steps (default: the config's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.03, 0.1], help="a joining vector's learning rates")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.4], help="a join's steps, as fractions of S")
    parser.add_argument("--keep", type=Path, help="keep the registries and checkpoints in this folder")
    parser.add_argument("--no-record", action="store_true", help="print only; write nothing to bench/results/")
    args = parser.parse_args(argv)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="family-join-"))
    folder.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(Path(args.config).read_text())
    load_config(args.config)
    steps = args.steps or base["training"]["steps"]
    grid = [(rate, max(1, round(fraction * steps))) for rate in args.rates for fraction in args.fractions]
    runs = {seed: one_seed(folder, base, steps, grid, seed) for seed in args.seeds}

    summary = {}
    for rate, cell_steps in grid:
        name = cell_name(rate, cell_steps)
        summary[name] = {"learning_rate": rate, "steps": cell_steps,
                         **{key: held_out_eval.spread([runs[seed]["cells"][name][key] for seed in runs]) for key in ("loss_ratio", "time_share")}}
    photos = held_out_eval.photo_names()
    print(f"\non {results.device_name()}, torch {torch.__version__}; {Path(args.config).name}'s settings; the family and the fifth's own "
          f"network {steps} steps; seeds {', '.join(map(str, args.seeds))}; held-out loss on {len(photos)} photos ({', '.join(photos)})")
    print("a joining style's held-out loss / its own network's (mean ± sd over the seeds); its training time as a share of its own network's")
    print(f"{'learning rate':<14} " + " ".join(f"{f'{round(fraction * steps)} steps':>26}" for fraction in args.fractions))
    for rate in args.rates:
        cells = [summary[cell_name(rate, max(1, round(fraction * steps)))] for fraction in args.fractions]
        print(f"{rate:<14g} " + " ".join(f"{cell['loss_ratio']['mean']:>8.3f} ± {cell['loss_ratio']['sd']:.3f} ({cell['time_share']['mean']:>4.0%})"
                                         for cell in cells))
    # The cells whose time is within the budget given its spread; the goal is judged on the best of them.
    within_budget = [cell for cell in summary.values()
                     if held_out_eval.verdict(cell["time_share"], GOAL_TIME_SHARE, higher_is_better=False) == "met"]
    best = min(within_budget or summary.values(), key=lambda cell: cell["loss_ratio"]["mean"])
    verdict = held_out_eval.verdict(best["loss_ratio"], GOAL_LOSS_RATIO, higher_is_better=False) if within_budget else "missed"
    print(f"goal, the same held-out loss within 10% in at most a fifth of the time: "
          f"{'best cell within the time' if within_budget else 'no cell within the time; best cell'}, lr {best['learning_rate']:g} x "
          f"{best['steps']} steps, x{best['loss_ratio']['mean']:.3f} ± {best['loss_ratio']['sd']:.3f} in "
          f"{best['time_share']['mean']:.0%} of the time: {verdict}")
    if not args.no_record:
        figures = {"config": Path(args.config).name, "steps": steps, "seeds": args.seeds, "family_styles": list(STYLES), "fifth": FIFTH,
                   "held_out_photos": photos, "grid": summary, "runs": runs, "best": best, "best_within_the_time": bool(within_budget),
                   "verdict": verdict,
                   "goal": {"loss_ratio": GOAL_LOSS_RATIO, "time_share": GOAL_TIME_SHARE}}
        print(f"recorded in {results.record('family_join', figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
