"""Train every style in a config on Ray Train and publish each finished model to the registry.

    python factory/train_all.py --config configs/tiny.yaml                 # starts a local Ray
    ray job submit --working-dir . -- python factory/train_all.py --config configs/coco.yaml

Styles are grouped into packs (one Ray Train run each, sharing one content stream); packs run
concurrently as the cluster's resources allow. Rerunning the same command resumes unfinished packs
from their checkpoints and skips styles already published with the same recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script (`python factory/train_all.py`), as ray job submit does
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ray
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from factory import contact_sheet, data, images, onnx_model, quality, registry, storage
from factory.content_stream import ContentSource, shard_chunks
from factory.loss_network import relu_index
from factory.packs import PackPlan, plan_packs, recipe, recipe_hash, resolve_style
from factory.settings import FactoryConfig, TrainingSettings, load_config
from factory.train_loop import CHECKPOINT_FILE, train_pack
from factory.transform_net import TransformNet
from factory.vgg_weights import VGGWeights, load_vgg19

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "tiny.yaml"
PREVIEW_MAX_SIDE, THUMBNAIL_MAX_SIDE = 512, 256
SMALL_EPOCH_IMAGES = 64
logger = logging.getLogger("factory")


@dataclass
class Outcome:
    style: str
    status: str  # "published", "already published", "failed"
    steps: int = 0
    loss: float | None = None
    images_per_second: float | None = None
    version: str = ""
    detail: str = ""
    # factory/quality.py's figures for the model's preview: colour_shift, structure_kept.
    quality: dict = dataclasses.field(default_factory=dict)


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
        config = FactoryConfig(**{**config.__dict__, "styles": tuple(s for s in config.styles if s.name in wanted)})
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


# CPUs kept free beside CPU training workers for Ray Data's reading and decoding: without one, the
# data pipeline waits for a CPU forever while the workers wait for data.
DATA_PIPELINE_CPUS = 1


def cpus_to_train(training: TrainingSettings) -> int:
    """CPUs a CPU training pack needs: its workers', and the data pipeline's."""
    return training.num_workers * training.cpus_per_worker + DATA_PIPELINE_CPUS


def init_ray(config: FactoryConfig) -> str | None:
    """Start or join Ray; returns the dashboard URL when this call started the connection."""
    if ray.is_initialized():
        return None
    if os.environ.get("RAY_ADDRESS"):  # inside `ray job submit`, or pointed at a running cluster
        return ray.init().dashboard_url
    # A local Ray on this machine: with room for Ray Data's decoding beside the training workers, or a
    # small laptop's pipeline stalls.
    needed = cpus_to_train(config.training)
    env_vars = {
        "PYTHONPATH": str(REPO_ROOT),
        # Ray Data logs a line per epoch ("Dataset ... execution finished"); a small data set has an
        # epoch every few steps, which drowned the factory's own progress lines. Warnings still show.
        "RAY_DATA_LOG_LEVEL": os.environ.get("RAY_DATA_LOG_LEVEL", "WARNING"),
    }
    return ray.init(num_cpus=max(os.cpu_count() or 1, needed), runtime_env={"env_vars": env_vars}).dashboard_url


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


def use_gpu(config: FactoryConfig) -> bool:
    if config.training.accelerator == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return config.training.accelerator == "gpu"


def concurrent_packs(config: FactoryConfig, gpu: bool, pack_count: int) -> int:
    """How many packs to start at once. On GPUs (or with custom worker resources, which name node
    types) every pack starts and asks for its workers; Ray queues what does not fit yet, so an
    autoscaling cluster sees the whole demand and starts nodes for it. Counting the GPUs present at
    the start would see none on a cluster whose GPU nodes have not started, and train one pack at a time."""
    training = config.training
    if training.max_concurrent_packs:
        return min(pack_count, training.max_concurrent_packs)
    if gpu or training.worker_resources:
        return pack_count
    # CPU training on the machines at hand: as many packs as fit, keeping one CPU for Ray Data's
    # decoding (packs queued behind a full machine would starve the running ones' data pipelines).
    fits = int((ray.cluster_resources().get("CPU", 1) - DATA_PIPELINE_CPUS) // (training.num_workers * training.cpus_per_worker))
    return max(1, min(pack_count, fits))


def fit_cpu_workers_to_cluster(config: FactoryConfig, gpu: bool) -> FactoryConfig:
    """CPU training on a cluster smaller than the config asks for (a 2-core laptop's `ray start --head`
    has 2 CPUs; configs/tiny.yaml gives its worker 2): the workers would take every CPU, and Ray Data's
    reads would wait for one forever. Give each worker fewer CPUs, keeping one for the data pipeline,
    and say so. Left alone: GPU training and custom worker resources, whose nodes an autoscaler adds."""
    training = config.training
    if gpu or training.worker_resources:
        return config
    available = int(ray.cluster_resources().get("CPU", 0))
    if available >= cpus_to_train(training):
        return config
    fitted = (available - DATA_PIPELINE_CPUS) // training.num_workers
    if fitted < 1:
        raise ValueError(
            f"the Ray cluster has {available} CPU(s); training on CPU with {training.num_workers} worker(s) needs at least "
            f"{training.num_workers + DATA_PIPELINE_CPUS} (one per worker, one for reading data): start Ray with more (ray start --num-cpus N) "
            "or lower training.num_workers"
        )
    logger.warning("the Ray cluster has %d CPUs: each of the %d training worker(s) gets %d instead of %d, leaving one "
                   "for reading data", available, training.num_workers, fitted, training.cpus_per_worker)
    return dataclasses.replace(config, training=dataclasses.replace(training, cpus_per_worker=fitted))


def loss_network_weights(config: FactoryConfig) -> VGGWeights:
    """Loaded once on the driver and shared through the object store: the only copy any worker needs."""
    weights = load_vgg19(config.loss_network.weights)
    deepest = max(relu_index(layer) for layer in (config.loss.content_layer, *config.loss.style_layers))
    return weights.first(deepest + 1)


def trained_net(state_dict: dict) -> TransformNet:
    net = TransformNet()
    net.load_state_dict(state_dict)
    return net.eval()


def stylise_preview(net: TransformNet, photo: "images.Image.Image") -> "images.Image.Image":
    with torch.inference_mode():
        output = net(images.to_tensor(photo).unsqueeze(0))[0]
    return images.to_image(output)


def publish_pack(config: FactoryConfig, plan: PackPlan, result, weights: VGGWeights, hashes: dict, photo) -> list[Outcome]:
    with result.checkpoint.as_directory() as directory:
        state = torch.load(Path(directory, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
    metrics = result.metrics or {}
    progress = state["progress"]
    train_seconds = max(float(progress["train_seconds"]), 1e-9)
    images_per_second = progress["step"] * config.training.batch_size / train_seconds
    outcomes = []
    for style in plan.styles:
        losses = metrics.get("losses", {}).get(style.name, {})
        style_image = images.decode_rgb(style.image_bytes, max_pixels=images.CONFIG_IMAGE_MAX_PIXELS)
        net = trained_net(state["nets"][style.name])
        preview = stylise_preview(net, photo)
        figures = quality.figures(preview, photo, style_image)
        metadata = {
            "style_image_sha256": style.image_sha256,
            "loss_network": {"source": weights.source, "random_weights": weights.is_random},
            "recipe_hash": hashes[style.name],
            "recipe": recipe(style, config, weights.source),
            "steps": progress["step"],
            "final_losses": losses,
            "loss_history": progress["loss_history"].get(style.name, []),
            "resumed_at_steps": progress["resumed_at_steps"],
            "throughput": {"images_per_second_per_style": images_per_second, "styles_in_pack": len(plan.styles),
                           "workers": config.training.num_workers, "train_seconds": train_seconds},
            "run_name": plan.run_name,
            "architecture": {"name": "johnson2016-instancenorm", "upsample": "nearest"},
            # How the preview of config.preview_image looks, in numbers (factory/quality.py).
            "quality": {**figures, "photo": Path(config.preview_image).name},
        }
        thumbnail = images.encode(images.fit_within(style_image, THUMBNAIL_MAX_SIDE))
        version = registry.publish(config.registry, style.name, state["nets"][style.name], metadata, thumbnail,
                                   images.encode(preview, "jpeg"), onnx_model=onnx_model.export(net))
        logger.info("published %s version %s to %s (colour shift %.2f, structure kept %.2f)", style.name, version,
                    config.registry, figures["colour_shift"], figures["structure_kept"])
        outcomes.append(Outcome(style.name, "published", progress["step"], losses.get("total"), images_per_second, version, quality=figures))
    return outcomes


def write_contact_sheet(config: FactoryConfig, photo, outcomes: list[Outcome], weights: VGGWeights) -> str | None:
    """<registry>/contact_sheet.jpg from the registry's current thumbnails and previews of this run's styles."""
    entries = []
    for outcome in outcomes:
        if outcome.status == "failed":
            continue
        style_image = images.decode_rgb(registry.read_file(config.registry, outcome.style, registry.THUMBNAIL_FILE, outcome.version),
                                        max_pixels=images.CONFIG_IMAGE_MAX_PIXELS)
        output = images.decode_rgb(registry.read_file(config.registry, outcome.style, registry.PREVIEW_FILE, outcome.version),
                                   max_pixels=images.CONFIG_IMAGE_MAX_PIXELS)
        caption = "  ".join(f"{label} {outcome.quality[key]:.2f}" for label, key in (("colour", "colour_shift"), ("structure", "structure_kept"))
                            if key in outcome.quality)
        entries.append(contact_sheet.SheetEntry(outcome.style, style_image, output, caption))
    if not entries:
        return None
    loss = config.loss
    title = (f"{config.name}: {len(entries)} style(s), {config.data.image_size} px\nloss network: {weights.source}"
             f"\nnormalisation {loss.normalisation}, weights {loss.content_weight:g} / {loss.style_weight:g} / {loss.tv_weight:g}")
    sheet = contact_sheet.render(photo, entries, title)
    uri = storage.join(config.registry, "contact_sheet.jpg")
    storage.write_bytes(uri, images.encode(sheet, "jpeg"))
    return uri


def train_one_pack(config: FactoryConfig, plan: PackPlan, content: ContentSource, vgg_ref, gpu: bool) -> "ray.train.Result":
    storage_filesystem, storage_path = storage.pyarrow_filesystem(config.training.storage_path)
    trainer = TorchTrainer(
        train_pack,
        # Each worker reads its own share of the content (factory/content_stream.py), not a split of
        # one Ray dataset, so that a checkpoint can say where every worker's reading stands.
        train_loop_config={"plan": plan, "vgg": vgg_ref, "content": content},
        scaling_config=ScalingConfig(
            num_workers=config.training.num_workers,
            use_gpu=gpu,
            resources_per_worker={"CPU": config.training.cpus_per_worker, **({"GPU": 1} if gpu else {}),
                                  **config.training.worker_resources},
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


def content_source(config: FactoryConfig, ledger) -> tuple[ContentSource, int]:
    """(what the workers read, how many images or files it holds): prepared shards when data.source
    has a shard manifest, else the image files, decoded as they stream."""
    settings = config.data
    manifest = data.shard_manifest(settings)
    if manifest:
        paths = data.list_shard_files(storage.absolute(settings.source))
        filesystem, _ = storage.pyarrow_filesystem(settings.source)
        logger.info("reading %d prepared images from %d shards at %s", manifest["count"], len(paths), settings.source)
        chunks = shard_chunks(paths, filesystem)
        return ContentSource(tuple(chunks), True, filesystem, settings.image_size, settings.max_image_pixels, ledger), manifest["count"]
    filesystem, paths, oversized = data.list_image_files(settings)
    if oversized:
        ledger.add.remote(oversized)
    # A handful of images (the bundled samples) would make every step or two a new epoch, and each
    # epoch costs Ray Data a new execution: list them several times, so an epoch is some 64 images.
    repeats = max(1, SMALL_EPOCH_IMAGES // len(paths))
    return ContentSource(tuple(paths * repeats), False, filesystem, settings.image_size, settings.max_image_pixels, ledger), len(paths)


def print_table(outcomes: list[Outcome], skipped: dict) -> None:
    print("\n" + "=" * 100)
    print(f"{'style':<24} {'outcome':<18} {'steps':>7} {'loss':>11} {'img/s/style':>12} {'colour':>7} {'struct':>7}  version / detail")
    for outcome in outcomes:
        loss = f"{outcome.loss:.4g}" if outcome.loss is not None else "-"
        rate = f"{outcome.images_per_second:.1f}" if outcome.images_per_second is not None else "-"
        colour, structure = (f"{outcome.quality[key]:.2f}" if key in outcome.quality else "-" for key in ("colour_shift", "structure_kept"))
        print(f"{outcome.style:<24} {outcome.status:<18} {outcome.steps:>7} {loss:>11} {rate:>12} {colour:>7} {structure:>7}  "
              f"{' '.join(part for part in (outcome.version, outcome.detail) if part)}")
    print("colour: how far each preview's colours moved from the photo's toward the painting's (1 = all the way); "
          "struct: how much of the photo's edges it keeps (1 = all)")
    print(f"skipped content files: {skipped.get('count', 0)} {skipped.get('by_reason', {})}")
    print("=" * 100, flush=True)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        config = build_config(args)
        refuse_outputs_inside_job_copy(config)
        weights = loss_network_weights(config)
        config = dataclasses.replace(config, loss=config.loss.resolved(weights.source))
        styles = [resolve_style(spec, config) for spec in config.styles]
        for style in styles:  # a bad style image must stop the run before any GPU time is spent
            try:
                images.decode_rgb(style.image_bytes, max_pixels=images.CONFIG_IMAGE_MAX_PIXELS)
            except images.ImageRejected as error:
                raise ValueError(f"style {style.name!r}: its image is unusable ({error})") from None
        photo = images.fit_within(images.decode_rgb(storage.read_bytes(config.preview_image), max_pixels=images.CONFIG_IMAGE_MAX_PIXELS), PREVIEW_MAX_SIDE)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    hashes = {style.name: recipe_hash(recipe(style, config, weights.source)) for style in styles}
    outcomes, to_train = [], []
    in_registry = set() if args.retrain else set(registry.list_styles(config.registry))
    for style in styles:
        published = None
        if style.name in in_registry:
            published = registry.read_metadata(config.registry, style.name)
        if published and published.get("recipe_hash") == hashes[style.name]:
            outcomes.append(Outcome(style.name, "already published", published["steps"], None, None, published["version"],
                                    quality=published.get("quality", {})))
        else:
            to_train.append(style)
    plans = plan_packs(config, to_train, hashes)

    if args.deploy and not (os.environ.get("RAY_ADDRESS") or ray.is_initialized()):
        print("error: --deploy needs a Ray cluster that outlives this command (a local Ray started here would take "
              "the endpoints down with it): run `ray start --head` and then RAY_ADDRESS=auto python factory/train_all.py "
              "--deploy ..., or use ray job submit", file=sys.stderr)
        return 2
    dashboard_url = init_ray(config)
    deployer = None
    if args.deploy:
        address = args.dashboard_address or dashboard_url
        if not address:
            print("error: --deploy needs --dashboard-address (or RAY_DASHBOARD_ADDRESS)", file=sys.stderr)
            return 2
        try:
            deployer = Deployer(config.registry, args.serve_config, address)
        except ValueError as error:
            print(f"error: --serve-config: {error}", file=sys.stderr)
            return 2
    ledger = data.SkipLedger.remote()
    skipped = {}
    if plans:
        try:
            content, content_count = content_source(config, ledger)
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        gpu = use_gpu(config)
        try:
            config = fit_cpu_workers_to_cluster(config, gpu)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        vgg_ref = ray.put(weights)
        workers = concurrent_packs(config, gpu, len(plans))
        logger.info("%d style(s) to train in %d pack(s), %d at a time, %d content files, on %s; loss network: %s",
                    len(to_train), len(plans), workers, content_count, "GPU" if gpu else "CPU", weights.source)

        def run(plan: PackPlan) -> list[Outcome]:
            started = time.time()
            try:
                result = train_one_pack(config, plan, content, vgg_ref, gpu)
                published = publish_pack(config, plan, result, weights, hashes, photo)
                if deployer:
                    deployed = deployer.deploy()
                    for outcome in published:
                        outcome.detail = deployed
                return published
            except Exception as error:  # one failed pack must not stop the others
                logger.exception("pack %s failed after %.0f s", plan.run_name, time.time() - started)
                return [Outcome(style.name, "failed", detail=f"{type(error).__name__}: {str(error)[:200]}") for style in plan.styles]

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for pack_outcomes in pool.map(run, plans):
                outcomes += pack_outcomes
        skipped = ray.get(ledger.summary.remote())
    if deployer:  # also styles that were already published, so the run ends with every style live
        deployed = deployer.deploy()
        for outcome in outcomes:
            if outcome.status != "failed":
                outcome.detail = deployed
    order = {style.name: index for index, style in enumerate(styles)}
    outcomes.sort(key=lambda outcome: order[outcome.style])
    print_table(outcomes, skipped)
    sheet_uri = write_contact_sheet(config, photo, outcomes, weights)
    if sheet_uri:
        print(f"contact sheet (the photo, each painting above its model's output): {sheet_uri}", flush=True)
    if weights.is_random:
        print("WARNING: these models were trained with a RANDOM loss network (loss_network.weights: random); they carry "
              "their paintings' colours and texture, not the brushwork a pretrained VGG-19 teaches, and are marked so in "
              "the registry. See the README's 'VGG-19 weights' for the real ones.", flush=True)
    return 1 if any(outcome.status == "failed" for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
