"""Every setting of a factory run, one frozen dataclass per kind; the YAML config maps onto them one to one.

Defaults follow the paper's recipe (Johnson et al. 2016: batch 4, Adam 1e-3, two COCO epochs of about
40k steps) and the loss settings of lengstrom/fast-style-transfer, which trains with the same MatConvNet
VGG-19 file the seed names. `configs/tiny.yaml` overrides them for a laptop CPU.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from factory import storage
from factory.style_names import validate_style_name

VGG19_LAYER_NAMES = tuple(
    f"relu{block}_{index}"
    for block, count in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4))
    for index in range(1, count + 1)
)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# The transform network's channel widths relative to the paper's (factory/transform_net.py).
MODEL_WIDTHS = (1.0, 0.5, 0.25)
ACCELERATORS = ("auto", "cpu", "gpu")
PACK_MODES = ("separate", "family")


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True, kw_only=True)
class DataSettings:
    # Folder or s3://bucket/prefix holding the content images (searched recursively).
    source: str = "data/train2014"
    # Side of the square crops the networks train on.
    image_size: int = 256
    # Files larger than this are skipped unread: a multi-GB "image" must not stall a worker.
    max_file_bytes: int = 64 * 1024 * 1024
    # Images with more pixels than this are skipped (also guards against decompression bombs).
    max_image_pixels: int = 64_000_000
    # Unusable files (corrupt, truncated, not images, too large, deleted since listed) are skipped and
    # counted; past this fraction of the listed files the pack stops with the reasons counted, since
    # so many bad files mean a wrong path or a broken copy, not dirty data. A file that cannot be read
    # for another reason (access denied, wrong region, throttling) is retried and then stops the pack.
    max_skipped_fraction: float = 0.01

    def __post_init__(self):
        require(bool(self.source), "data.source is empty: give a folder or an s3://bucket/prefix of images")
        require(16 <= self.image_size <= 4096, f"data.image_size must be 16..4096, got {self.image_size}")
        require(self.image_size % 4 == 0, f"data.image_size must be a multiple of 4 (two stride-2 downsamplings), got {self.image_size}")
        require(self.max_file_bytes > 0, "data.max_file_bytes must be positive")
        require(self.max_image_pixels > 0, "data.max_image_pixels must be positive")
        require(0 <= self.max_skipped_fraction <= 1, f"data.max_skipped_fraction must be 0..1, got {self.max_skipped_fraction}")


@dataclass(frozen=True, kw_only=True)
class LossNetworkSettings:
    # Where the VGG-19 weights come from, tried in order: a .mat or .pth path (local or s3://),
    # "torchvision" (torchvision's download, needs internet) or "random" (offline smoke runs only).
    weights: tuple[str, ...] = ("data/imagenet-vgg-verydeep-19.mat",)

    def __post_init__(self):
        require(len(self.weights) > 0, "loss_network.weights is empty: list at least one VGG-19 source")


# The loss normalisations factory/losses.py implements; defined here so that reading settings (the
# serving front door does) never imports torch.
LOSS_NORMALISATIONS = ("none", "per_layer")
NORMALISATIONS = ("auto", *LOSS_NORMALISATIONS)
# Each normalisation's default weights (content, style, TV). "none": lengstrom/fast-style-transfer's,
# tuned for the MatConvNet file. "per_layer": measured on the random and MatConvNet-format networks
# (docs/loss-scale.md): style 10 moves a photo most of the way to the painting's colours in a few
# hundred steps while content 3 keeps its edges; TV 0.1 only trims noise finer than the photo's own.
DEFAULT_LOSS_WEIGHTS = {
    "none": {"content_weight": 7.5, "style_weight": 100.0, "tv_weight": 200.0},
    "per_layer": {"content_weight": 3.0, "style_weight": 10.0, "tv_weight": 0.1},
}


def default_normalisation(loss_network_source: str) -> str:
    """'auto' resolved: the seed's formulation for the MatConvNet file its weights were tuned on,
    per-layer scaling for every other network (torchvision's, random), where those weights misfire."""
    return "none" if loss_network_source.startswith("matconvnet:") else "per_layer"


@dataclass(frozen=True, kw_only=True)
class LossSettings:
    # VGG-19 layer whose features the stylised image must keep (lengstrom/fast-style-transfer: relu4_2).
    content_layer: str = "relu4_2"
    # Layers whose Gram matrices carry the style (Gatys et al. and lengstrom: the first ReLU of each block).
    style_layers: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    # How the terms are scaled: "none" (the seed's: raw mean squares, whose size depends on the loss
    # network), "per_layer" (each term relative to its target: one set of weights fits any VGG-19),
    # or "auto": "none" with the MatConvNet file, "per_layer" with any other loss network.
    normalisation: str = "auto"
    # Weight of the content loss; unset: the normalisation's default (none: 7.5, per_layer: 3).
    content_weight: float | None = None
    # Weight of the style loss; unset: the normalisation's default (none: 100, per_layer: 10).
    style_weight: float | None = None
    # Weight of the total-variation loss; unset: the normalisation's default (none: 200, per_layer: 0.1).
    tv_weight: float | None = None
    # Longest side the style image is resized to before its Gram matrices are taken.
    style_size: int = 512
    # Weight of the stability loss (Gupta et al. 2017): each step also stylises its photos with Gaussian
    # noise added and penalises how far the outputs move (factory/losses.py, stability_per_image). It
    # makes a network steadier from frame to frame of a video (less flicker: bench/flicker.py) for one
    # more transform-network pass a step. 0 (the default): off, the paper's recipe.
    stability_weight: float = 0.0
    # The standard deviation of that noise, in 0..255 pixel units.
    stability_noise: float = 8.0

    def __post_init__(self):
        for layer in (self.content_layer, *self.style_layers):
            require(layer in VGG19_LAYER_NAMES, f"unknown VGG-19 layer {layer!r}; choose from {', '.join(VGG19_LAYER_NAMES)}")
        require(len(self.style_layers) > 0, "loss.style_layers is empty: name at least one layer")
        require(self.normalisation in NORMALISATIONS, f"loss.normalisation must be one of {', '.join(NORMALISATIONS)}, got {self.normalisation!r}")
        for name in ("content_weight", "style_weight", "tv_weight", "stability_weight"):
            value = getattr(self, name)
            require(value is None or value >= 0, f"loss.{name} must be >= 0, got {value}")
        require(0 < self.stability_noise <= 64, f"loss.stability_noise must be in (0, 64] (0..255 pixel units), got {self.stability_noise}")
        require(16 <= self.style_size <= 4096, f"loss.style_size must be 16..4096, got {self.style_size}")

    def resolved(self, loss_network_source: str) -> "LossSettings":
        """These settings with 'auto' and unset weights filled in for the loss network actually loaded."""
        normalisation = default_normalisation(loss_network_source) if self.normalisation == "auto" else self.normalisation
        defaults = DEFAULT_LOSS_WEIGHTS[normalisation]
        weights = {name: default if getattr(self, name) is None else getattr(self, name) for name, default in defaults.items()}
        return dataclasses.replace(self, normalisation=normalisation, **weights)


@dataclass(frozen=True, kw_only=True)
class TrainingSettings:
    # Content images per optimiser step, per style (the paper: 4). Split across the pack's workers: more
    # workers at the same batch only add DDP's cost. To use more GPUs, train more packs (one per GPU,
    # side by side); to train one pack faster, raise batch_size with num_workers and scale
    # learning_rate with it (linear scaling: batch 16 on 4 workers, 4e-3), which changes the recipe.
    batch_size: int = 4
    # Optimiser steps per style (the paper: 40k, about two COCO epochs at batch 4).
    steps: int = 40_000
    # Adam learning rate (the paper: 1e-3).
    learning_rate: float = 1e-3
    # Data-parallel workers per pack (one GPU each), sharing batch_size between them.
    num_workers: int = 1
    # "gpu", "cpu", or "auto": on one machine, its GPUs if it has any, else its CPUs; on a cluster
    # (RAY_ADDRESS set, or several nodes), where GPU nodes may not have started yet, auto with no GPU in
    # sight stops the run asking for gpu or cpu instead of training on CPUs a hundred times slower.
    accelerator: str = "auto"
    # CPUs reserved per training worker; leave the rest of the node to Ray Data's decoding.
    cpus_per_worker: int = 1
    # Extra Ray resources each worker asks for, e.g. {train_node: 0.001} to keep training on
    # cluster.yaml's gpu_train nodes.
    worker_resources: dict = field(default_factory=dict)
    # Styles trained together on one content stream (shared decoding and VGG content features).
    styles_per_pack: int = 4
    # Packs training at once; 0 means as many as the cluster's resources hold.
    max_concurrent_packs: int = 0
    # "auto" (bf16 on GPUs that have it, else fp16; fp32 on CPU), "fp32", "bf16" or "fp16".
    precision: str = "auto"
    # torch.compile the transform networks and loss network (GPU only; ignored on CPU). On by default:
    # on an H200 the bf16 channels_last step measured about 880 images/s compiled against 500 eager
    # (issue 5); the first steps wait a minute or two for the compiler.
    compile: bool = True
    # channels_last (NHWC) memory layout, which tensor cores want (GPU only; ignored on CPU).
    channels_last: bool = True
    # Steps between checkpoints.
    checkpoint_every: int = 1_000
    # Steps between progress lines and TensorBoard points.
    log_every: int = 50
    # Checkpoints and TensorBoard events: a folder or s3://bucket/prefix.
    storage_path: str = "data/checkpoints"
    # Worker failures tolerated per pack before it is given up (each restarts from the last checkpoint).
    max_failures: int = 3
    # While packs wait for their workers (no GPU capacity yet), say every this many seconds what they
    # ask for and what the cluster has.
    waiting_log_s: float = 300.0
    # Give up packs whose workers have not started after this many seconds (spot capacity that never
    # comes, a quota); packs already training go on. 0 waits forever.
    start_deadline_s: float = 0.0
    # Seed for weight initialisation.
    seed: int = 0
    # "separate": a network per style (the paper's). "family": the styles of a pack share one network
    # whose instance norms are conditional (factory/family.py); each style is only its norms' scales and
    # shifts. A family trains for training.steps in all (not per style), so its styles must agree on
    # steps, learning_rate and model width. Styles may also name a family of their own (styles[].family).
    pack_mode: str = "separate"

    def __post_init__(self):
        for name in ("batch_size", "steps", "num_workers", "cpus_per_worker", "styles_per_pack", "checkpoint_every", "log_every"):
            require(getattr(self, name) >= 1, f"training.{name} must be >= 1, got {getattr(self, name)}")
        require(self.batch_size % self.num_workers == 0, f"training.batch_size ({self.batch_size}) must be divisible by training.num_workers ({self.num_workers})")
        require(self.learning_rate > 0, f"training.learning_rate must be > 0, got {self.learning_rate}")
        require(self.max_concurrent_packs >= 0, "training.max_concurrent_packs must be >= 0 (0 = automatic)")
        require(self.max_failures >= 0, "training.max_failures must be >= 0")
        require(self.waiting_log_s > 0, "training.waiting_log_s must be > 0")
        require(self.start_deadline_s >= 0, "training.start_deadline_s must be >= 0 (0 waits forever)")
        require(self.precision in PRECISIONS, f"training.precision must be one of {PRECISIONS}, got {self.precision!r}")
        require(self.accelerator in ACCELERATORS, f"training.accelerator must be one of {ACCELERATORS}, got {self.accelerator!r}")
        require(self.pack_mode in PACK_MODES, f"training.pack_mode must be one of {', '.join(PACK_MODES)}, got {self.pack_mode!r}")


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    # Channel width of the transform network relative to the paper's (Magenta's alpha): 1.0, 0.5 (a
    # quarter of the compute, Johnson's own half-width models) or 0.25. Recorded in each model's metadata.
    width: float = 1.0

    def __post_init__(self):
        require_width(self.width, "model.width")


def require_width(width: float, where: str) -> None:
    require(width in MODEL_WIDTHS, f"{where} must be one of {', '.join(map(str, MODEL_WIDTHS))}, got {width!r}")


@dataclass(frozen=True, kw_only=True)
class StyleSpec:
    # Style name: a URL path segment and storage key, e.g. "starry_night".
    name: str
    # The style image: a local path or s3:// URI.
    image: str
    # Per-style overrides of loss and training settings; None takes the global value.
    content_weight: float | None = None
    style_weight: float | None = None
    tv_weight: float | None = None
    stability_weight: float | None = None
    steps: int | None = None
    learning_rate: float | None = None
    # A family's style vectors' learning rate (its network keeps learning_rate); unset: learning_rate,
    # as Magenta trains them. A vector moves at most about this much a draw: short runs want more.
    vector_learning_rate: float | None = None
    # A family's output conv normalised per style too (Magenta's transform; 6 numbers more a style);
    # unset: true. false: the output conv shared as a single style's is, as families were first trained.
    output_norm: bool | None = None
    width: float | None = None
    # The style family this style belongs to (one network for all its styles: training.pack_mode).
    # Unset: its own network, or under pack_mode family the family named after the config.
    family: str | None = None

    def __post_init__(self):
        validate_style_name(self.name)
        if self.family is not None:
            validate_style_name(self.family)
        if self.width is not None:
            require_width(self.width, f"style {self.name!r}: width")
        require(bool(self.image), f"style {self.name!r} has no image: give a path or s3:// URI")
        for weight in ("content_weight", "style_weight", "tv_weight", "stability_weight"):
            value = getattr(self, weight)
            require(value is None or value >= 0, f"style {self.name!r}: {weight} must be >= 0, got {value}")
        require(self.steps is None or self.steps >= 1, f"style {self.name!r}: steps must be >= 1")
        require(self.learning_rate is None or self.learning_rate > 0, f"style {self.name!r}: learning_rate must be > 0")
        require(self.vector_learning_rate is None or self.vector_learning_rate > 0, f"style {self.name!r}: vector_learning_rate must be > 0")


@dataclass(frozen=True, kw_only=True)
class ResolvedStyle:
    """One style with every per-style setting filled in: what a training worker needs."""

    name: str
    image_bytes: bytes
    image_sha256: str
    content_weight: float
    style_weight: float
    tv_weight: float
    steps: int
    learning_rate: float
    # The stability loss's weight (loss.stability_weight, or the style's own); 0: off.
    stability_weight: float = 0.0
    # A family's style vectors' learning rate; None: learning_rate (factory/style_pack.make_optimizer).
    vector_learning_rate: float | None = None
    # A family's output conv normalised per style (TransformNet's output_norm); recorded in a family's recipe only when off.
    output_norm: bool = True
    # The transform network's width (model.width, or the style's own).
    width: float = 1.0
    # The family whose network it shares; "" for a network of its own.
    family: str = ""
    # The published family version it joins, training only its style vector (factory/family_additions.py).
    adds_to: str = ""


@dataclass(frozen=True, kw_only=True)
class FactoryConfig:
    # Names the run: checkpoints live under <storage_path>/<name>-<pack>, so a rerun resumes them.
    name: str = "factory"
    # Where finished models are published: a folder or s3://bucket/prefix.
    registry: str = "data/registry"
    # Photo stylised for each model's preview image (local path or s3://); never one under data.source.
    preview_image: str = "data/samples/held_out/chelsea.png"
    # Photos each model's quality figures are the mean over (factory/held_out.py): photos no model
    # trained on, so never under data.source. The figures on each are kept in the model's metadata too.
    evaluation_photos: tuple[str, ...] = ("data/samples/held_out/chelsea.png", "data/samples/held_out/rocket.jpg")
    data: DataSettings = field(default_factory=DataSettings)
    loss_network: LossNetworkSettings = field(default_factory=LossNetworkSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    styles: tuple[StyleSpec, ...] = ()

    def __post_init__(self):
        validate_style_name(self.name)  # the run name becomes a storage key too
        require(len(self.evaluation_photos) > 0, "evaluation_photos is empty: list at least one photo outside data.source")
        require(len(self.styles) > 0, "the config lists no styles: add at least one under 'styles:' with a name and an image")
        names = [style.name for style in self.styles]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        require(not duplicates, f"style names must be unique; repeated: {', '.join(duplicates)}")


# Settings that were, and why they went: a config that still has one is told so, not just "unknown".
RETIRED_SETTINGS = {
    "family_styles_per_step": "every image of a family's step now carries its own style, each style once in every pass over "
                              "the styles (Magenta's method, factory/family.py). Delete the line",
}


def build_settings(cls, values: object, where: str):
    """Build dataclass `cls` from a YAML mapping, rejecting unknown keys with the list of known ones."""
    if not isinstance(values, dict):
        raise ValueError(f"{where or 'the config'} must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in set(values) & set(RETIRED_SETTINGS):
        raise ValueError(f"{where + '.' if where else ''}{key} is no longer a setting: {RETIRED_SETTINGS[key]}")
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(repr(k) for k in unknown)} in {where or 'the config'}; known: {', '.join(sorted(known))}")
    kwargs = {}
    for key, value in values.items():
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}" if where else key)
    try:
        return cls(**kwargs)
    except TypeError as error:  # a required field is missing
        raise ValueError(f"{where or 'the config'}: {error}") from None


def _convert(hint, value, where: str):
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build_settings(hint, value, where)
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        if isinstance(value, (str, dict)):
            value = [value]
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, got {value!r}")
        return tuple(_convert(item_type, item, f"{where}[{index}]") for index, item in enumerate(value))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None:
            return None
        return _convert(next(arg for arg in typing.get_args(hint) if arg is not type(None)), value, where)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads "1e-3" as a string
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValueError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def _set_dotted(values: dict, dotted_key: str, value) -> None:
    *parents, leaf = dotted_key.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"cannot set {dotted_key}: {part} is not a section")
    node[leaf] = value


def load_config(path: str | Path | None, overrides: typing.Iterable[str] = ()) -> FactoryConfig:
    """Read a YAML config (a local path or s3:// URI) and apply `section.key=value` overrides (values parsed as YAML)."""
    values: dict = {}
    if path is not None:
        path = str(path)
        try:
            text = storage.read_bytes(path).decode()
        except FileNotFoundError:
            raise ValueError(f"config file {path!r} not found; pass --config with a YAML file such as configs/tiny.yaml "
                             "(or an s3:// URI)") from None
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"config file {path!r} is not valid YAML: {error}") from None
        if not isinstance(values, dict):
            raise ValueError(f"config file {path!r} must hold a mapping of settings at the top level")
    for override in overrides:
        key, separator, raw_value = override.partition("=")
        if not separator or not key:
            raise ValueError(f"override {override!r} must look like section.key=value, e.g. training.steps=100")
        _set_dotted(values, key.strip(), yaml.safe_load(raw_value))
    return build_settings(FactoryConfig, values, "")
