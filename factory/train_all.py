"""Train every style in a config on Ray Train and publish each finished model to the registry.

    python factory/train_all.py --config configs/tiny.yaml                 # starts a local Ray
    ray job submit --working-dir . -- python factory/train_all.py --config configs/coco.yaml

Styles are grouped into packs (one Ray Train run each, sharing one content stream); packs run
concurrently as the cluster's resources allow. Rerunning the same command resumes unfinished packs
from their checkpoints and skips styles already published with the same recipe; --retrain trains
them again from the start.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script (`python factory/train_all.py`), as ray job submit does
    # the repository, not this script's folder: its onnx_model.py would shadow ONNX Runtime's own
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from factory import cluster_fit, data, images, onnx_int8, pack_watch, preflight, storage
from factory.content_stream import ContentSource, sample_images, shard_chunks
from factory.loss_network import relu_index
from factory.family_additions import addition_hashes, find_additions
from factory.packs import PackPlan, check_families, family_hashes, family_of, plan_packs, recipe, recipe_hash, resolve_style
from factory.held_out import HeldOutPhotos, read_held_out
from factory.publishing import Outcome, print_table, publish_pack, published_metadata, write_contact_sheet
from factory.settings import FactoryConfig, ResolvedStyle, load_config
from factory.train_loop import train_pack
from factory.vgg_weights import VGGWeights, load_vgg19

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "tiny.yaml"
SMALL_EPOCH_IMAGES = 64
# Content photos each own-network style's int8 copy is calibrated on (factory/onnx_int8.py).
CALIBRATION_PHOTOS = 16
logger = logging.getLogger("factory")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: configs/tiny.yaml, the bundled sample data)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config setting, e.g. --set training.steps=100 (repeatable)")
    parser.add_argument("--steps", type=int, help="shorthand for --set training.steps=N")
    parser.add_argument("--registry", help="shorthand for --set registry=URI")
    parser.add_argument("--num-workers", type=int, help="shorthand for --set training.num_workers=N")
    parser.add_argument("--styles", help="comma-separated subset of the config's styles to train")
    parser.add_argument("--retrain", action="store_true", help="train styles even if the registry has them with the same recipe")
    parser.add_argument("--deploy", action="store_true",
                        help="deploy each style to Ray Serve as soon as it is published (see serve/deploy.py)")
    parser.add_argument("--serve-config", help="serving config YAML for --deploy (autoscaling, limits, HTTP port)")
    parser.add_argument("--no-contact-sheet", action="store_true",
                        help="write no <registry>/contact_sheet.jpg (the order desk's runs: the catalogue's sheet stays)")
    parser.add_argument("--dashboard-address", default=os.environ.get("RAY_DASHBOARD_ADDRESS"),
                        help="Ray dashboard address for --deploy (default: the cluster this run is on)")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> FactoryConfig:
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"training.steps={args.steps}")
    if args.registry:
        overrides.append(f"registry={args.registry}")
    if args.num_workers is not None:
        overrides.append(f"training.num_workers={args.num_workers}")
    config = load_config(args.config, overrides)
    if args.styles:
        wanted = [name.strip() for name in args.styles.split(",") if name.strip()]
        unknown = sorted(set(wanted) - {style.name for style in config.styles})
        if unknown:
            raise ValueError(f"--styles names {', '.join(unknown)}, not in the config; it has {', '.join(s.name for s in config.styles)}")
        # A style family is one network: asking for one of its styles trains (or finds published) all of them.
        families = {family_of(spec, config) for spec in config.styles if spec.name in wanted} - {""}
        config = FactoryConfig(**{**config.__dict__, "styles": tuple(s for s in config.styles if s.name in wanted or family_of(s, config) in families)})
    return config


def refuse_outputs_inside_job_copy(config: FactoryConfig) -> None:
    """Under `ray job submit --working-dir`, the job runs in a temporary copy of that folder, which Ray
    deletes later: a relative registry or checkpoint path would put the results there and lose them."""
    if "working_dir" not in os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", ""):
        return
    for setting, value in (("registry", config.registry), ("training.storage_path", config.training.storage_path)):
        if not storage.is_s3(value) and not Path(value).is_absolute():
            raise ValueError(
                f"{setting} is the relative path {value!r}: under `ray job submit --working-dir` it would land in "
                "the job's temporary copy of the working dir and be deleted with it. Give an absolute path that "
                f"every node can reach, or an s3://bucket/prefix, e.g. --set {setting}=/shared/style-factory/{Path(value).name}"
            )


class Deployer:
    """--deploy: after each publish, deploy the registry. The first deploy starts the front door and style
    pool; later ones change nothing unless a dedicated style was retrained, since the pool picks up
    newly published versions by itself within pool.refresh_s."""

    def __init__(self, registry_uri: str, serve_config: str | None, dashboard_address: str):
        from serve.settings import load_serving_config  # serving code only when asked for

        self.config = load_serving_config(serve_config, registry=registry_uri)
        self.address = dashboard_address if "://" in dashboard_address else f"http://{dashboard_address}"
        self.lock = threading.Lock()  # packs publish concurrently; deploys go one at a time

    def deploy(self) -> str:
        from serve import deploy

        with self.lock:
            try:
                deploy.deploy(self.config, self.address)
                return f"deployed (live within {self.config.pool.refresh_s:g} s)"
            except Exception as error:  # a serving problem must not lose the trained models
                logger.exception("deploying to Ray Serve at %s failed", self.address)
                return f"deploy failed: {type(error).__name__}: {str(error)[:150]}"


def train_one_pack(config: FactoryConfig, plan: PackPlan, content: ContentSource, vgg_ref, board, gpu: bool) -> "ray.train.Result":
    storage_filesystem, storage_path = storage.pyarrow_filesystem(config.training.storage_path)
    trainer = TorchTrainer(
        train_pack,
        # Each worker reads its own share of the content (factory/content_stream.py), not a split of
        # one Ray dataset, so that a checkpoint can say where every worker's reading stands.
        train_loop_config={"plan": plan, "vgg": vgg_ref, "content": content, "board": board},
        scaling_config=ScalingConfig(
            num_workers=config.training.num_workers,
            use_gpu=gpu,
            resources_per_worker=cluster_fit.worker_resources(config.training, gpu),
        ),
        run_config=RunConfig(
            name=plan.run_name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            failure_config=FailureConfig(max_failures=config.training.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    return trainer.fit()


def content_source(config: FactoryConfig) -> tuple[ContentSource, int]:
    """(what the workers read, how many images or files it holds): prepared shards when data.source
    has a shard manifest, else the image files, decoded as they stream."""
    settings = config.data
    manifest = data.shard_manifest(settings)
    if manifest:
        paths = data.list_shard_files(storage.absolute(settings.source))
        filesystem, _ = storage.pyarrow_filesystem(settings.source)
        logger.info("reading %d prepared images from %d shards at %s", manifest["count"], len(paths), settings.source)
        chunks = shard_chunks(paths, filesystem)
        ledger = data.SkipLedger.remote()  # shards hold decoded images only: nothing to skip
        return ContentSource(tuple(chunks), True, filesystem, settings.image_size, settings.max_image_pixels, ledger), manifest["count"]
    filesystem, paths, oversized = data.list_image_files(settings)
    ledger = data.SkipLedger.remote(len(paths) + len(oversized), settings.max_skipped_fraction)
    if oversized:
        over_limit = ray.get(ledger.add.remote(oversized))
        if over_limit:
            raise ValueError(over_limit)
    # A handful of images (the bundled samples) would make every step or two a new epoch, and each
    # epoch costs Ray Data a new execution: list them several times, so an epoch is some 64 images.
    repeats = max(1, SMALL_EPOCH_IMAGES // len(paths))
    return ContentSource(tuple(paths * repeats), False, filesystem, settings.image_size, settings.max_image_pixels, ledger), len(paths)


def loss_network_weights(config: FactoryConfig) -> VGGWeights:
    """Loaded once on the driver and shared through the object store: the only copy any worker needs."""
    weights = load_vgg19(config.loss_network.weights)
    deepest = max(relu_index(layer) for layer in (config.loss.content_layer, *config.loss.style_layers))
    return weights.first(deepest + 1)


def read_styles(config: FactoryConfig) -> list[ResolvedStyle]:
    """Every style with its image read and checked: a bad one stops the run before any GPU time is spent."""
    styles = [resolve_style(spec, config) for spec in config.styles]
    for style in styles:
        try:
            images.decode_rgb(style.image_bytes, max_pixels=images.CONFIG_IMAGE_MAX_PIXELS)
        except images.ImageRejected as error:
            raise ValueError(f"style {style.name!r}: its image is unusable ({error}); fix styles[].image in the config") from None
    return styles


def to_train(styles: list[ResolvedStyle], hashes: dict, published: dict, retrain: bool) -> tuple[list[Outcome], list[ResolvedStyle]]:
    """(outcomes of styles already published with the same recipe, the styles to train)."""
    done, wanted = [], []
    for style in styles:
        metadata = published.get(style.name)
        if metadata and metadata.get("recipe_hash") == hashes[style.name] and not retrain:
            done.append(Outcome(style.name, "already published", metadata["steps"], None, None, metadata["version"],
                                quality=metadata.get("quality", {})))
        else:
            wanted.append(style)
    # A family trains as one network: one member to train means all of them.
    retrained_families = {style.family for style in wanted if style.family and not style.adds_to}
    wanted += [style for style in styles if style.family in retrained_families and not style.adds_to and style not in wanted]
    done = [outcome for outcome in done if not any(outcome.style == style.name for style in wanted)]
    return done, sorted(wanted, key=styles.index)


def refuse_deploy_without_cluster(args: argparse.Namespace) -> None:
    if args.deploy and not (os.environ.get("RAY_ADDRESS") or ray.is_initialized()):
        raise ValueError("--deploy needs a Ray cluster that outlives this command (a local Ray started here would take "
                         "the endpoints down with it): run `ray start --head` and then RAY_ADDRESS=auto python "
                         "factory/train_all.py --deploy ..., or use ray job submit")


def make_deployer(args: argparse.Namespace, config: FactoryConfig, dashboard_url: str | None) -> Deployer | None:
    if not args.deploy:
        return None
    address = args.dashboard_address or dashboard_url
    if not address:
        raise ValueError("--deploy needs --dashboard-address (or RAY_DASHBOARD_ADDRESS)")
    try:
        return Deployer(config.registry, args.serve_config, address)
    except ValueError as error:
        raise ValueError(f"--serve-config: {error}") from None


def failure_detail(error: Exception, content: ContentSource) -> str:
    """Why a pack failed, in a line: the skipped files' limit when that was it, else the error."""
    over_limit = ray.get(content.ledger.over_limit.remote())
    return over_limit or f"{type(error).__name__}: {str(error)[:300]}"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:  # everything a run needs, checked before any pack asks for a worker
        config = build_config(args)
        refuse_outputs_inside_job_copy(config)
        weights = loss_network_weights(config)
        config = dataclasses.replace(config, loss=config.loss.resolved(weights.source))
        styles = read_styles(config)
        photos = read_held_out(config)  # photos no model trains on: refuses one under data.source
        own_hashes = {style.name: recipe_hash(recipe(style, config, weights.source)) for style in styles}
        styles, family_bases = find_additions(config, styles, weights.source, own_hashes, args.retrain)
        check_families(styles, config.training.batch_size)
        hashes = addition_hashes(styles, family_hashes(styles, own_hashes))
        published = published_metadata(config, styles)
        outcomes, wanted = to_train(styles, hashes, published, args.retrain)
        plans = plan_packs(config, wanted, hashes, replaces={name: metadata["version"] for name, metadata in published.items()},
                           family_bases=family_bases)
        refuse_deploy_without_cluster(args)
        deployer = make_deployer(args, config, cluster_fit.init_ray(config))
        if plans:
            content, content_count = content_source(config)
            gpu = cluster_fit.use_gpu(config)
            config = cluster_fit.fit_cpu_workers_to_cluster(config, gpu)
            preflight.check(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    given_up, skipped = [], {}
    if plans:
        outcomes += train_and_publish(config, plans, content, content_count, weights, hashes, photos, deployer, gpu, given_up)
        skipped = ray.get(content.ledger.summary.remote())
    if deployer:  # also styles that were already published, so the run ends with every style live
        deployed = deployer.deploy()
        for outcome in outcomes:
            if outcome.status != "failed":
                outcome.detail = deployed
    order = {style.name: index for index, style in enumerate(styles)}
    outcomes.sort(key=lambda outcome: order[outcome.style])
    print_table(outcomes, skipped)
    sheet_uri = None if args.no_contact_sheet else write_contact_sheet(config, photos, outcomes, weights)
    if sheet_uri:
        print(f"contact sheet (a held-out photo, each painting above its model's output): {sheet_uri}", flush=True)
    if weights.is_random:
        print("WARNING: these models were trained with a RANDOM loss network (loss_network.weights: random); they carry "
              "their paintings' colours and texture, not the brushwork a pretrained VGG-19 teaches, and are marked so in "
              "the registry. See docs/data-and-weights.md, 'VGG-19 weights', for the real ones.", flush=True)
    code = 1 if any(outcome.status == "failed" for outcome in outcomes) else 0
    if given_up:  # their threads still wait inside Ray Train for workers that never came: end them with the process
        sys.stdout.flush(), sys.stderr.flush()
        ray.shutdown()
        os._exit(code)
    return code


def int8_calibration(content: ContentSource, plans: list[PackPlan]) -> list:
    """Content photos for the int8 copies of own-network styles (factory/onnx_int8.py); none for a run of
    families only, or where they cannot be read now (the styles are then published without a copy)."""
    if all(plan.family for plan in plans):
        return []
    try:
        return [onnx_int8.calibration_batch(image) for image in sample_images(content, CALIBRATION_PHOTOS)]
    except Exception as error:  # a copy is an extra: training goes on, and says so
        logger.warning("no content photos to calibrate int8 copies on (%s): publishing without them", error)
        return []


def train_and_publish(config: FactoryConfig, plans: list[PackPlan], content: ContentSource, content_count: int, weights: VGGWeights,
                      hashes: dict, photos: HeldOutPhotos, deployer: Deployer | None, gpu: bool, given_up: list) -> list[Outcome]:
    """Every pack trained and published, side by side as the cluster allows; packs given up past
    training.start_deadline_s are appended to `given_up`."""
    vgg_ref, board = ray.put(weights), pack_watch.PackBoard.remote()
    calibration = int8_calibration(content, plans)
    concurrent = cluster_fit.concurrent_packs(config, gpu, len(plans))
    logger.info("%d style(s) to train in %d pack(s), %d at a time, %d content files, on %s; loss network: %s",
                sum(len(plan.styles) for plan in plans), len(plans), concurrent, content_count, "GPU" if gpu else "CPU", weights.source)

    def run(plan: PackPlan) -> list[Outcome]:
        started = time.time()
        try:
            result = train_one_pack(config, plan, content, vgg_ref, board, gpu)
            published = publish_pack(config, plan, result, weights, hashes, photos, calibration)
            if deployer:
                deployed = deployer.deploy()
                for outcome in published:
                    outcome.detail = deployed
            return published
        except Exception as error:  # one failed pack must not stop the others
            logger.exception("pack %s failed after %.0f s", plan.run_name, time.time() - started)
            return [Outcome(style.name, "failed", detail=failure_detail(error, content)) for style in plan.styles]

    asked = cluster_fit.worker_resources(config.training, gpu)
    outcomes, abandoned = pack_watch.run_packs(plans, run, concurrent, config.training, board, asked)
    given_up += abandoned
    outcomes += [Outcome(style.name, "failed", detail=f"no workers started within training.start_deadline_s "
                         f"({config.training.start_deadline_s:g} s)") for plan in abandoned for style in plan.styles]
    return outcomes


if __name__ == "__main__":
    sys.exit(main())
