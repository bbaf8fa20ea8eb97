"""Per-image style draws against one style a step, timed side by side on the same family.

    python bench/family_draws.py              # configs/tiny.yaml's batch and crop size, four styles: about 2 min on 2 cores

A family's step used to stylise its whole batch with one style; now every image carries its own
(factory/family.py). The per-image step is StepRunner.step as training runs it: a vector gathered per
image, Gram targets and loss weights per image, each style's losses as means over its own images, and
the undrawn styles' vectors and Adam moments put back. The per-step arm is the step as it was: the
batch through the network with one style's vector, that style's objective alone (its Gram targets
broadcast), plain Adam over every parameter. Both run on one family in alternating rounds of --steps
steps (so a slow minute of the machine hits both), and it prints each one's time per image and their
ratio. Figures go to bench/results/<device>-<date>.json under "family_draws".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import torch
import yaml

from bench import held_out_eval, results
from bench.families import STYLES, style_image
from factory.family import StyleFamily, UndrawnStylesKept, image_styles
from factory.loss_network import LossNetwork
from factory.settings import LossSettings, ResolvedStyle
from factory.style_pack import PerceptualObjective, StepRunner, make_optimizer
from factory.vgg_weights import random_vgg19


def resolved_styles() -> list[ResolvedStyle]:
    return [ResolvedStyle(name=name, image_bytes=style_image(name).read_bytes(), image_sha256="-", content_weight=3.0, style_weight=10.0,
                          tv_weight=0.1, steps=1, learning_rate=1e-3) for name in STYLES]


def per_image_step(loss: LossSettings, loss_network: LossNetwork):
    """Training's family step (StepRunner.step with a style per image); returns step(photos, draw)."""
    torch.manual_seed(0)
    styles = resolved_styles()
    family = StyleFamily(list(STYLES))
    optimizer = make_optimizer(family, styles)
    runner = StepRunner(family, PerceptualObjective(loss_network, loss, styles, torch.device("cpu")), optimizer, "fp32", "cpu",
                        undrawn_kept=UndrawnStylesKept(optimizer, family.style_vectors))
    return lambda photos, draw: runner.step(photos, draw, sorted(set(draw)))


def per_step_step(loss: LossSettings, loss_network: LossNetwork):
    """The step before per-image draws: the batch by one style, that style's objective, plain Adam."""
    torch.manual_seed(0)
    styles = resolved_styles()
    family = StyleFamily(list(STYLES))
    optimizer = make_optimizer(family, styles)
    objectives = [PerceptualObjective(loss_network, loss, [style], torch.device("cpu")) for style in styles]

    def step(photos: torch.Tensor, draw: list[int]) -> None:
        optimizer.zero_grad(set_to_none=True)
        stylised = family.net(photos, family.style_vectors[draw[0]].expand(photos.shape[0], -1))
        total, _ = objectives[draw[0]](photos, stylised.unsqueeze(0))
        total.backward()
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "tiny.yaml"), help="batch size, crop size and loss settings")
    parser.add_argument("--steps", type=int, default=10, help="steps a round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each draw, alternating")
    parser.add_argument("--no-record", action="store_true", help="print only; write nothing to bench/results/")
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text())
    batch, size = config["training"]["batch_size"], config["data"]["image_size"]
    loss = LossSettings(**{key: tuple(value) if isinstance(value, list) else value for key, value in config.get("loss", {}).items()}).resolved("random")
    loss_network = LossNetwork(random_vgg19(), [loss.content_layer, *loss.style_layers])
    photos = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255
    methods = {"per_image": (per_image_step(loss, loss_network), lambda step: image_styles(0, step * batch, batch, len(STYLES))),
               "per_step": (per_step_step(loss, loss_network), lambda step: [step % len(STYLES)] * batch)}
    for step_function, draw in methods.values():  # warm-up
        step_function(photos, draw(0))
    seconds = {name: [] for name in methods}
    for round_index in range(args.rounds):
        for name, (step_function, draw) in methods.items():
            started = time.perf_counter()
            for step in range(args.steps):
                step_function(photos, draw(round_index * args.steps + step))
            seconds[name].append((time.perf_counter() - started) / (args.steps * batch))
    per_image = {name: statistics.median(values) for name, values in seconds.items()}
    ratio = per_image["per_image"] / per_image["per_step"]
    # Each round's ratio (its two arms ran back to back): the spread that says whether "no slower" holds.
    round_ratios = held_out_eval.spread([image / step for image, step in zip(seconds["per_image"], seconds["per_step"])])
    verdict = held_out_eval.verdict(round_ratios, 1.0, higher_is_better=False)
    print(f"on {results.device_name()}, torch {torch.__version__} with {torch.get_num_threads()} threads; a family of {len(STYLES)}, batch {batch} "
          f"of {size} px, {args.rounds} alternating rounds of {args.steps} steps (median of rounds)")
    for name, value in per_image.items():
        print(f"  {name:<10} {1e3 * value:7.1f} ms an image  (rounds: {', '.join(f'{1e3 * v:.1f}' for v in seconds[name])})")
    print(f"  per-image draws take {ratio:.3f}x the time of per-step draws (rounds: {round_ratios['mean']:.3f} ± {round_ratios['sd']:.3f}); "
          f"no slower: {verdict}")
    if not args.no_record:
        figures = {"config": Path(args.config).name, "batch": batch, "image_size": size, "styles": len(STYLES), "steps_a_round": args.steps,
                   "rounds": args.rounds, "seconds_per_image": seconds, "median_seconds_per_image": per_image, "per_image_over_per_step": ratio,
                   "round_ratios": round_ratios, "no_slower": verdict}
        print(f"recorded in {results.record('family_draws', figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
