"""What the stability loss costs a training step: the same pack's step with and without it, side by side.

    python bench/stability_step.py              # configs/tiny.yaml's shapes, 5 rounds of 20 steps each way (~2 min, 2 cores)

A pack of the config's styles (random VGG-19, the config's loss layers, batch and crop size) takes
steps with loss.stability_weight 0 and 1 in alternating rounds, in one process; the figure is the
median step time of each, and their ratio. bench/flicker.py measures the whole runs' images/s too,
but over minutes of a shared machine; this isolates the step. Figures go to
bench/results/<device>-<date>.json under "stability_step".
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import torch

from bench import results
from factory.loss_network import LossNetwork
from factory.packs import resolve_style
from factory.style_pack import PerceptualObjective, StepRunner, StylePack, make_optimizer
from factory.vgg_weights import random_vgg19
from factory.settings import load_config


def runner(config, stability_weight: float) -> StepRunner:
    torch.manual_seed(0)
    settings = config.loss.resolved("random")
    config = dataclasses.replace(config, loss=settings)  # each style's weights filled in as a run fills them
    styles = [dataclasses.replace(resolve_style(spec, config), stability_weight=stability_weight) for spec in config.styles]
    loss_network = LossNetwork(random_vgg19(seed=0), [settings.content_layer, *settings.style_layers])
    pack = StylePack([style.name for style in styles], widths={style.name: style.width for style in styles})
    objective = PerceptualObjective(loss_network, settings, styles, torch.device("cpu"))
    return StepRunner(pack, objective, make_optimizer(pack, styles), "fp32", "cpu")


def round_ms(step: StepRunner, photos: torch.Tensor, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step.step(photos)
    return 1e3 * (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "tiny.yaml"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="steps a round")
    parser.add_argument("--no-record", action="store_true", help="print only; write nothing to bench/results/")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    side, batch = config.data.image_size, config.training.batch_size
    photos = torch.rand(batch, 3, side, side) * 255
    arms = {"off": runner(config, 0.0), "on": runner(config, 1.0)}
    for step in arms.values():  # warm-up: first steps allocate
        round_ms(step, photos, 2)
    times = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name, step in arms.items():
            times[name].append(round_ms(step, photos, args.steps))
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["on"] / medians["off"]
    print(f"on {results.device_name()}, torch {torch.__version__} with {torch.get_num_threads()} threads; {Path(args.config).name}: "
          f"{len(config.styles)} styles, batch {batch}, {side} px")
    print(f"step without the stability loss {medians['off']:.0f} ms, with it {medians['on']:.0f} ms: x{ratio:.2f} the time "
          f"(rounds: {', '.join(f'{value:.0f}' for value in times['off'])} / {', '.join(f'{value:.0f}' for value in times['on'])} ms)")
    if not args.no_record:
        figures = {"config": Path(args.config).name, "styles": len(config.styles), "batch": batch, "side": side, "rounds": args.rounds,
                   "steps_a_round": args.steps, "threads": torch.get_num_threads(), "step_ms": medians, "rounds_ms": times, "ratio": ratio}
        print(f"recorded in {results.record('stability_step', figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
