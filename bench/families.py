"""Style families against a network per style, side by side, over several seeds, judged on held-out photos.

    python bench/families.py                     # 4 styles at configs/tiny.yaml's settings, seeds 0 1 2: about 30 min on 2 cores
    python bench/families.py --steps 20 --seeds 0 1 --no-record   # a quick look

Trains the same four styles three ways in one run per seed (each arm's styles named <arm>-<style>, a
registry per seed in a temporary folder; --keep keeps them): a network per style for S steps (the
config's, or --steps), and two families whose steps are set from FLOPs counted on the real training
step (bench/training_flops.py: transform networks and VGG-19, forward and backward): one at the
separate networks' FLOPs, one at a quarter of them.

Every figure is on photos no model trained on (bench/held_out_eval.py: data/samples/held_out and, where
present, ../shared/data/content's classic photos), each the mean over them: colour shift and structure
kept (factory/quality.py), each model's own perceptual loss, and how different the styles' outputs of
the same photos are from each other (distinctness). For each seed it
takes each family's figures as a share of the separate networks' of that seed; the table gives their
mean and spread over the seeds, and the issue's goals for the quarter-FLOPs family as met, missed or
undecided given that spread. Then it loads 16 styles both ways from a registry, as serving does, and
counts the weights they hold. Figures go to bench/results/<device>-<date>.json under "families".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

import torch
import yaml

from bench import held_out_eval, results
from bench.training_flops import step_flops
from bench.training_runs import train_into
from factory import registry
from factory.settings import LossSettings, load_config

STYLES = ("starry_night", "the_scream", "udnie", "shipwreck")
CATALOGUE, FAMILY_SIZE = 1_000, 16
ARMS = {"separate": "sep", "family_equal_flops": "eq", "family_quarter_flops": "qtr"}  # arm: its styles' prefix, and family name
FLOP_SHARES = {"family_equal_flops": 1.0, "family_quarter_flops": 0.25}
QUARTER = "family_quarter_flops"


def quarter_variants(vector_rates: list[float], without_output_norm: bool) -> tuple[dict[str, str], dict[str, dict]]:
    """ARMS plus quarter-FLOPs families trained with other settings: for each rate, one whose vectors learn at
    it (styles[].vector_learning_rate), and one without the output conv's norm (styles[].output_norm: false).
    Returns ({arm: prefix}, {arm: its styles' own settings})."""
    settings = {f"{QUARTER}_vectors_{rate:g}": {"vector_learning_rate": rate} for rate in vector_rates}
    if without_output_norm:
        settings[f"{QUARTER}_no_output_norm"] = {"output_norm": False}
    prefixes = {arm: f"qv{index}" for index, arm in enumerate(settings)}
    return {**ARMS, **prefixes}, settings
GOALS = {"colour_shift": 0.9, "structure_kept": 0.9, "distinctness": 0.8}  # the quarter-FLOPs family's, as shares of separate


def style_image(name: str) -> Path:
    return REPO_ROOT / "data" / "samples" / "styles" / f"{name}.jpg"


def absolute_settings(config: dict) -> dict:
    """The base config with its paths absolute and its figures taken on every held-out photo."""
    config = {**config, **held_out_eval.evaluation_setting()}
    config["registry"] = str(REPO_ROOT / config["registry"])
    config["data"] = {**config["data"], "source": str(REPO_ROOT / config["data"]["source"])}
    config["styles"] = [{**entry, "image": str(REPO_ROOT / entry["image"])} for entry in config.get("styles", [])]
    return config


def family_steps(base: dict, steps: int) -> tuple[dict[str, int], dict[str, dict]]:
    """Each family arm's steps, from FLOPs per step counted at the base config's batch and crop size."""
    images = {name: style_image(name).read_bytes() for name in STYLES}
    loss = LossSettings(**{key: tuple(value) if isinstance(value, list) else value for key, value in base.get("loss", {}).items()})
    batch, size, width = base["training"]["batch_size"], base["data"]["image_size"], base.get("model", {}).get("width", 1.0)
    flops = {"separate": step_flops(False, images, batch, size, loss, width), "family": step_flops(True, images, batch, size, loss, width)}
    per_arm = {arm: max(1, round(share * steps * flops["separate"]["total"] / flops["family"]["total"])) for arm, share in FLOP_SHARES.items()}
    return per_arm, flops


def write_config(folder: Path, base: dict, steps: int, arm_steps: dict[str, int], seed: int, arms: dict[str, str],
                 arm_settings: dict[str, dict]) -> Path:
    config = absolute_settings(base)
    config["training"] = {**config["training"], "steps": steps, "seed": seed, "styles_per_pack": len(STYLES)}
    config["styles"] = [{"name": f"{prefix}-{name}", "image": str(style_image(name)),
                         **({"family": prefix, "steps": arm_steps.get(arm, arm_steps[QUARTER])} if arm != "separate" else {}),
                         **arm_settings.get(arm, {})}
                        for arm, prefix in arms.items() for name in STYLES]
    path = folder / f"families-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def one_seed(folder: Path, base: dict, steps: int, arm_steps: dict[str, int], seed: int, arms: dict[str, str],
             arm_settings: dict[str, dict]) -> dict:
    """{arm: {"styles": {style: figures}, "distinctness": ..., "train_seconds": ...}} of one seed's run. A
    --keep folder that already has this seed's registry trains only the arms it lacks (the rest are
    "already published", their figures read back)."""
    config = write_config(folder, base, steps, arm_steps, seed, arms, arm_settings)
    published = train_into(config, folder, f"seed{seed}", None)
    registry_uri = str(folder / f"registry-seed{seed}")
    names = {arm: {f"{prefix}-{name}": name for name in STYLES} for arm, prefix in arms.items()}
    judged, outputs = held_out_eval.judge(registry_uri, {style: style_image(name).read_bytes() for arm in names for style, name in names[arm].items()})
    figures = {}
    for arm, styles in names.items():
        figures[arm] = {
            # training's figures (steps, seconds, final loss) with the judged ones on every held-out photo over them
            "styles": {name: {**published[style], **judged[style]} for style, name in styles.items()},
            "distinctness": held_out_eval.distinctness({style: outputs[style] for style in styles}),
            "train_seconds": published[next(iter(styles))]["train_seconds"],
        }
    print(f"  seed {seed}: " + ", ".join(f"{arm} distinctness {figures[arm]['distinctness']:.1f}, "
                                         f"{figures[arm]['train_seconds']:.0f} s" for arm in arms), flush=True)
    return figures


def shares_of_separate(runs: dict[int, dict], arms: dict[str, str]) -> dict[str, dict[str, dict]]:
    """{arm: {figure: spread over seeds of that seed's family figure / separate figure (styles' mean)}}."""
    shares = {}
    for arm in arms:
        per_seed = {key: [] for key in ("colour_shift", "structure_kept", "held_out_loss", "distinctness")}
        for figures in runs.values():
            mine, theirs = figures[arm], figures["separate"]
            for key in ("colour_shift", "structure_kept", "held_out_loss"):
                per_seed[key].append(statistics.mean(mine["styles"][style][key] / theirs["styles"][style][key] for style in STYLES))
            per_seed["distinctness"].append(mine["distinctness"] / theirs["distinctness"])
        shares[arm] = {key: held_out_eval.spread(values) for key, values in per_seed.items()}
    return shares


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "tiny.yaml"), help="settings to train with (its styles are replaced)")
    parser.add_argument("--steps", type=int, help="S: each separate network's steps (default: the config's training.steps)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training.seed of each run (at least three for a claim)")
    parser.add_argument("--vector-rates", type=float, nargs="*", default=[],
                        help="add, for each rate, a quarter-FLOPs family whose style vectors learn at it (styles[].vector_learning_rate)")
    parser.add_argument("--without-output-norm", action="store_true",
                        help="add a quarter-FLOPs family without the output conv's norm (styles[].output_norm: false)")
    parser.add_argument("--keep", type=Path, help="keep the registries and checkpoints in this folder (a rerun trains only new arms)")
    parser.add_argument("--no-record", action="store_true", help="print only; write nothing to bench/results/")
    args = parser.parse_args(argv)
    arms, arm_settings = quarter_variants(args.vector_rates, args.without_output_norm)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="families-"))
    folder.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(Path(args.config).read_text())
    load_config(args.config)  # a config that does not load stops here, not after the first seed's run
    steps = args.steps or base["training"]["steps"]
    arm_steps, flops = family_steps(base, steps)
    arm_steps.update({arm: arm_steps[QUARTER] for arm in arm_settings})
    total_flops = {"separate": steps * flops["separate"]["total"], **{arm: arm_steps[arm] * flops["family"]["total"] for arm in arm_steps}}
    print(f"FLOPs a step (GFLOP, transform + loss network): separate {flops['separate']['transform'] / 1e9:.1f} + "
          f"{flops['separate']['loss_network'] / 1e9:.1f}, family {flops['family']['transform'] / 1e9:.1f} + "
          f"{flops['family']['loss_network'] / 1e9:.1f}; steps: separate {steps}, "
          + ", ".join(f"{arm} {count}" for arm, count in arm_steps.items()), flush=True)
    runs = {seed: one_seed(folder, base, steps, arm_steps, seed, arms, arm_settings) for seed in args.seeds}
    shares = shares_of_separate(runs, arms)
    memory = serving_memory(folder)

    photos = held_out_eval.photo_names()
    print(f"\non {results.device_name()}, torch {torch.__version__}; {Path(args.config).name}'s settings, S = {steps}; seeds "
          f"{', '.join(map(str, args.seeds))}; every figure on {len(photos)} held-out photos ({', '.join(photos)})")
    print("each style's figures, mean ± sd over the seeds (colour shift / structure kept / held-out loss):")
    print(f"{'style':<14} " + " ".join(f"{arm:>36}" for arm in arms))
    for style in STYLES:
        cells = []
        for arm in arms:
            spreads = [held_out_eval.spread([runs[seed][arm]["styles"][style][key] for seed in runs])
                       for key in ("colour_shift", "structure_kept", "held_out_loss")]
            cells.append(" / ".join(f"{figure['mean']:.2f}±{figure['sd']:.2f}" for figure in spreads))
        print(f"{style:<14} " + " ".join(f"{cell:>36}" for cell in cells))
    print("as a share of the separate networks' of the same seed, mean ± sd (min..max) over the seeds:")
    for key in ("colour_shift", "structure_kept", "distinctness", "held_out_loss"):
        print(f"{key:<14} " + " ".join(f"{shares[arm][key]['mean']:>17.0%} ± {shares[arm][key]['sd']:.0%} "
                                       f"({shares[arm][key]['min']:.0%}..{shares[arm][key]['max']:.0%})" for arm in arms))
    print(f"{'TFLOPs':<14} " + " ".join(f"{total_flops[arm] / 1e12:>36.1f}" for arm in arms))
    print(f"{'train seconds':<14} " + " ".join(f"{statistics.mean(runs[seed][arm]['train_seconds'] for seed in runs):>36.0f}" for arm in arms))
    verdicts = {arm: {key: held_out_eval.verdict(shares[arm][key], goal) for key, goal in GOALS.items()} for arm in [QUARTER, *arm_settings]}
    for arm, verdict in verdicts.items():
        print(f"goals for {arm}: " + ", ".join(f"{key} >= {goal:.0%}: {verdict[key]}" for key, goal in GOALS.items()))
    print(f"serving, weights held for {FAMILY_SIZE} styles: separate {memory['separate_bytes'] / 2**20:.1f} MiB, one family "
          f"{memory['family_bytes'] / 2**20:.2f} MiB; {CATALOGUE} styles: {memory[f'catalogue_{CATALOGUE}_separate_mb']:,.0f} MiB separate, "
          f"{memory[f'catalogue_{CATALOGUE}_families_of_{FAMILY_SIZE}_mb']:,.0f} MiB as families of {FAMILY_SIZE}")
    if not args.no_record:
        figures = {"config": Path(args.config).name, "steps": {"separate": steps, **arm_steps}, "seeds": args.seeds, "styles": list(STYLES),
                   "held_out_photos": photos, "flops_per_step": flops, "total_flops": total_flops, "runs": runs,
                   "share_of_separate": shares, "goals": GOALS, "verdicts": verdicts, "serving_memory": memory,
                   "arm_settings": arm_settings, "arms": arms}
        print(f"recorded in {results.record('families', figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
