"""Serving settings: the style pool's, and a frozen dataclass per endpoint (defaults plus overrides).

A serving config (YAML) looks like:

    registry: data/registry
    http: {host: 0.0.0.0, port: 8000}
    pool: {model_cache_mb: 512, refresh_s: 5}
    defaults: {max_replicas: 4}                  # the pool's replicas, and every style's limits
    styles:
      starry_night: {dedicated: true, max_replicas: 8, num_gpus: 0.25}   # a hot style: its own application
      rarely_used: {dedicated: true, min_replicas: 0}                   # its own, scaled to zero when idle

Every style is served by the pool unless marked dedicated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from factory.settings import build_settings, require
from factory.style_names import validate_style_name
from serve.size_buckets import parse_shape


@dataclass(frozen=True, kw_only=True)
class EndpointSettings:
    # Serve this style from an application of its own, with its own replicas and autoscaling, instead
    # of from the pool (a hot style); only then do the other per-style settings apply to it.
    dedicated: bool = False
    # Replicas kept when idle; 0 lets a rarely used style scale to zero (its first request waits).
    min_replicas: int = 1
    # Upper bound of the autoscaler.
    max_replicas: int = 4
    # Requests in flight per replica the autoscaler aims for.
    target_ongoing_requests: float = 2.0
    # Requests one replica accepts at once (the rest queue at the proxy).
    max_ongoing_requests: int = 8
    # Requests allowed to wait for a replica, counted by each caller (each node's HTTP proxy, so the
    # cluster-wide bound is this times the proxies); past it that proxy sheds load with 503.
    max_queued_requests: int = 32
    # CPUs and GPU fraction per replica (e.g. 0.25 puts four styles on one GPU); a CPU pool replica
    # runs as many styles at once as whole CPUs it reserved, each on one thread.
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    # Extra Ray resources per replica, e.g. {serve_node: 0.001} to keep replicas on cluster.yaml's gpu_serve nodes.
    resources: dict = field(default_factory=dict)
    # GPU replicas run fp16 (serve/static_shapes.py compiles their common sizes); on CPU, torch.compile is 1.3x faster per
    # image but adds about a minute to each replica's start, so it is opt-in.
    compile_on_cpu: bool = False
    # GPU replicas: request sizes compiled as static shapes, at most this many per replica (each a
    # compile of tens of seconds, in the background); 0 runs every size eagerly.
    compiled_shapes: int = 16
    # A size is compiled once it has been asked for this many times (the warm shapes at once): a client
    # cycling through odd sizes cannot take the slots of the sizes that come often.
    compile_after_requests: int = 3
    # No size over this many pixels is compiled (a compile's memory grows with it): larger ones run eagerly.
    max_compiled_pixels: int = 2048 * 2048
    # Shapes (WIDTHxHEIGHT) compiled when a GPU replica starts: phone photos fitted to default_max_side
    # (4:3 both ways) and squares. Each costs two compiles, done before the replica takes traffic, so
    # the list is short; other sizes compile once asked for often enough. Inductor's cache
    # (/tmp/torchinductor_<user>) lets later replicas on a node reuse the work.
    warm_shapes: list = field(default_factory=lambda: ["1024x768", "768x1024", "1024x1024"])
    # Same-sized requests arriving within batch_wait_timeout_s are run as one batch of up to this many.
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.01
    # Pixels one forward pass may hold (a batch of large images runs in smaller groups): bounds a
    # replica's activation memory, which a batch of 8 images of 2048x2048 would blow on a GPU slice.
    max_batch_pixels: int = 8 * 1024 * 1024
    # Request body limit (bytes): larger bodies get 413 before they are read whole.
    max_body_bytes: int = 20 * 1024 * 1024
    # Seconds a client has to send the whole body (20 MB at 6 Mbit/s); a slower one gets 408, so a
    # trickling upload cannot hold a replica's slot and memory for long.
    body_timeout_s: float = 30.0
    # Serve's health check of each replica: every this many seconds, failing past the timeout. Three
    # failures in a row replace the replica (a replica checks only what a new one would fix).
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    # Decoded pixel limit: larger images (decompression bombs included) get 413 before decoding.
    max_input_pixels: int = 40_000_000
    # Longest side the image is downscaled to before stylising, unless the request asks for less.
    default_max_side: int = 1024
    # The most a request's max_side may ask for (bounds memory and time per request).
    max_side_limit: int = 2048

    def __post_init__(self):
        require(self.min_replicas >= 0, "min_replicas must be >= 0")
        require(self.max_replicas >= max(1, self.min_replicas), "max_replicas must be >= 1 and >= min_replicas")
        require(self.target_ongoing_requests > 0, "target_ongoing_requests must be > 0")
        require(self.max_ongoing_requests >= 1, "max_ongoing_requests must be >= 1")
        require(self.max_queued_requests >= 1, "max_queued_requests must be >= 1")
        require(self.num_cpus >= 0 and self.num_gpus >= 0, "num_cpus and num_gpus must be >= 0")
        require(self.max_batch_size >= 1, "max_batch_size must be >= 1")
        require(self.compiled_shapes >= 0, "compiled_shapes must be >= 0 (0: no compiling)")
        require(self.compile_after_requests >= 1, "compile_after_requests must be >= 1")
        require(self.max_compiled_pixels >= 32 * 32, "max_compiled_pixels must be >= 1024")
        for shape in self.warm_shapes:
            parse_shape(shape)  # a ValueError that says how to write one
        require(self.max_batch_pixels >= 1, "max_batch_pixels must be >= 1")
        require(self.batch_wait_timeout_s >= 0, "batch_wait_timeout_s must be >= 0")
        require(self.max_body_bytes >= 1024, "max_body_bytes must be >= 1024")
        require(self.body_timeout_s > 0, "body_timeout_s must be > 0")
        require(self.health_check_period_s > 0 and self.health_check_timeout_s > 0,
                "health_check_period_s and health_check_timeout_s must be > 0")
        require(self.max_input_pixels >= 64 * 64, "max_input_pixels must be >= 4096")
        require(16 <= self.default_max_side <= self.max_side_limit, "default_max_side must be 16..max_side_limit")


CPU_RUNTIMES = ("onnxruntime", "onnxruntime-int8", "torch")


@dataclass(frozen=True, kw_only=True)
class PoolSettings:
    # Memory for loaded models in each pool replica: past it the least recently used style is dropped.
    # A style takes about 6.7 MB in torch on the CPU, 18.5 MB in ONNX Runtime, 3.4 MB in fp16 on a GPU:
    # 1024 MB keeps about 150, 55 or 300 styles warm per replica.
    model_cache_mb: int = 1024
    # How a CPU pool replica runs models published with their ONNX export: "torch" (6.7 MB a style) or
    # "onnxruntime" (faster: 8.80 against 7.15 requests/s over 50 loaded styles on 2 cores,
    # bench/serve_many.py; but 18.5 MB a style, which puts 200 styles over 2 GB), or "onnxruntime-int8": a
    # style's int8 copy where it has one (factory/onnx_int8.py; bench/int8.py), else its fp32 export. GPU: torch in fp16.
    cpu_runtime: str = "torch"
    # How often the front door re-reads the registry: a new or retrained style is served at most this
    # long after it is published. Each time is one conditional GET of the registry's index.json.
    refresh_s: float = 5.0
    # How often the front door also reads every style's current.json (a request or two per style on
    # S3): it repairs an index that two publishers overwrote at once, and serves registries without one.
    full_refresh_s: float = 300.0
    # A listing older than this is stale: answers say so (X-Registry-Age-Seconds, a metric) and the front
    # keeps serving it, since a new replica could read storage no better. Only a refresh that has stopped
    # trying for this long (a stuck thread, which a new replica would fix) fails the health check.
    stale_after_s: float = 600.0
    # A refresh that would drop more than half of the served styles (at least two) at once is far more
    # likely a storage fault or a wrong path than a withdrawal: it is held back (a log line, a metric)
    # and applied only if storage says the same for this long. Withdrawals of fewer go live at once.
    mass_removal_hold_s: float = 900.0
    # CPUs per front-door replica; it only parses requests and routes them, the pool does the pixels.
    front_num_cpus: float = 0.1
    # Styles each pool replica loads when it starts, before it takes traffic (the most requested ones:
    # the style_factory_requests metric says which); the rest load on first use.
    prewarm: list = field(default_factory=list)
    # A model whose load failed (a corrupt file, a deleted version), or whose output was not finite, is
    # refused this long without another try, so that a request stream for it neither hammers the store
    # nor evicts healthy models; a transient failure answers 503 with Retry-After: the time left.
    failure_ttl_s: float = 30.0
    # style_factory_requests counts the this-many most requested styles (per front replica) under their own
    # name and the rest as "other": per-style series stay bounded however many styles are published.
    metric_top_styles: int = 50
    # Models a pool replica loads at once, on threads of their own (decoding, forward passes and the
    # health check keep theirs): a replica's model memory peaks at the cache plus this many loads.
    max_concurrent_loads: int = 2

    def __post_init__(self):
        require(self.model_cache_mb >= 16, "pool.model_cache_mb must be >= 16 (room for two models)")
        require(self.cpu_runtime in CPU_RUNTIMES, f"pool.cpu_runtime must be one of {', '.join(CPU_RUNTIMES)}, got {self.cpu_runtime!r}")
        require(0.5 <= self.refresh_s <= 600, "pool.refresh_s must be between 0.5 and 600 seconds")
        require(self.full_refresh_s >= self.refresh_s, "pool.full_refresh_s must be >= pool.refresh_s")
        require(self.stale_after_s >= 2 * self.refresh_s, "pool.stale_after_s must be at least twice pool.refresh_s")
        require(self.front_num_cpus >= 0, "pool.front_num_cpus must be >= 0")
        for name in self.prewarm:
            validate_style_name(name)
        require(self.failure_ttl_s >= 0, "pool.failure_ttl_s must be >= 0")
        require(self.metric_top_styles >= 0, "pool.metric_top_styles must be >= 0")
        require(self.max_concurrent_loads >= 1, "pool.max_concurrent_loads must be >= 1")
        require(self.mass_removal_hold_s >= 0, "pool.mass_removal_hold_s must be >= 0")


@dataclass(frozen=True, kw_only=True)
class HttpSettings:
    # Where Serve's HTTP proxy listens.
    host: str = "127.0.0.1"
    port: int = 8000
    # Serve's end-to-end limit per request (its proxy answers 408 past it): bounds a request that waits
    # in queues and runs too long. A client can lift it with an x-request-timeout-seconds header, so
    # a front proxy should strip that header (docs/operations.md); body_timeout_s bounds uploads regardless.
    request_timeout_s: float = 120.0
    # Seconds an idle keep-alive connection stays open (Serve's default is 5).
    keep_alive_timeout_s: int = 5
    # Where Serve runs an HTTP proxy: "EveryNode" (any node's port answers), or "HeadOnly" (one proxy;
    # also where several nodes share one machine and so one port).
    proxy_location: str = "EveryNode"

    def __post_init__(self):
        require(self.proxy_location in ("EveryNode", "HeadOnly"), f"http.proxy_location must be EveryNode or HeadOnly, got {self.proxy_location!r}")
        require(self.request_timeout_s > 0, "http.request_timeout_s must be > 0")
        require(self.keep_alive_timeout_s >= 1, "http.keep_alive_timeout_s must be >= 1")


@dataclass(frozen=True, kw_only=True)
class OrdersSettings:
    # POST /orders takes a painting and trains it into a live style (serve/order_desk.py); off: /orders answers 404.
    enabled: bool = False
    # The recipe of an ordered style: a factory config (its styles are ignored), and --set overrides for it.
    training_config: str = "configs/tiny.yaml"
    overrides: list = field(default_factory=list)
    # The published family an order joins when it names none ("" : a network of its own). A client
    # sends family= (empty) for a network of its own, or another family's name.
    default_family: str = ""
    # A joining style's steps (unset: a fifth of the recipe's) and its vector's learning rate: a join at
    # 0.1 for a fifth of the steps came within 4% of its own network's held-out loss (docs/families-and-widths.md).
    join_steps: int | None = None
    join_learning_rate: float = 0.1
    # Orders waiting to train; past it POST /orders answers 503 with Retry-After.
    max_queued: int = 20
    # Training runs (Ray jobs) at once, and orders trained together in one run (one pack).
    max_running: int = 1
    batch_max: int = 4
    # How long the oldest queued order waits for others to share its run, when fewer than batch_max wait.
    batch_wait_s: float = 5.0
    # Each token's limits: orders in 24 hours, and orders queued or training at once (past either: 429 with Retry-After).
    per_token_per_day: int = 20
    per_token_concurrent: int = 2
    # Tokens that may order (one a line; a line may be "label token"), in a file on every node; the
    # environment variable STYLE_FACTORY_ORDER_TOKENS adds comma-separated ones. Never in this YAML.
    tokens_file: str = ""
    # The painting: at most this many bytes and pixels, at least this many pixels on its shorter side.
    max_painting_bytes: int = 20_000_000
    max_painting_pixels: int = 40_000_000
    min_painting_side: int = 64
    # Ray resources the training job's driver asks for (its workers ask the recipe's own), e.g.
    # {train_node: 0.001} on cluster.yaml's cluster, and how often the desk looks at its jobs.
    entrypoint_resources: dict = field(default_factory=dict)
    poll_s: float = 2.0
    # Attempts at an order's run (a job that fails, or that the cluster would not start) before it fails.
    max_attempts: int = 3
    # Where the job runs from (the recipe's relative paths start there); unset: the checkout the desk runs from.
    working_dir: str = ""
    # The jobs' Ray runtime_env where the nodes lack the project (e.g. {working_dir: <zip URL>}: the job then
    # runs in its copy); unset: the serving config's runtime_env.
    runtime_env: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.default_family:
            validate_style_name(self.default_family)
        require(isinstance(self.overrides, list) and all(isinstance(item, str) and "=" in item for item in self.overrides),
                "orders.overrides must be a list of KEY=VALUE strings, e.g. [training.steps=2000]")
        require(self.join_steps is None or self.join_steps >= 1, "orders.join_steps must be >= 1")
        require(self.join_learning_rate > 0, "orders.join_learning_rate must be > 0")
        require(self.max_queued >= 1, "orders.max_queued must be >= 1")
        require(self.max_running >= 0, "orders.max_running must be >= 0 (0 holds every order in the queue)")
        require(self.batch_max >= 1, "orders.batch_max must be >= 1")
        require(self.batch_wait_s >= 0, "orders.batch_wait_s must be >= 0")
        require(self.per_token_per_day >= 1 and self.per_token_concurrent >= 1,
                "orders.per_token_per_day and orders.per_token_concurrent must be >= 1")
        require(self.max_painting_bytes >= 1024 and self.max_painting_pixels >= self.min_painting_side ** 2 and self.min_painting_side >= 16,
                "orders: max_painting_bytes must be >= 1024, min_painting_side >= 16, max_painting_pixels >= its square")
        require(self.poll_s > 0 and self.max_attempts >= 1, "orders.poll_s must be > 0 and orders.max_attempts >= 1")
        require(all(isinstance(name, str) and isinstance(amount, (int, float)) and amount >= 0 and name not in ("CPU", "GPU", "memory")
                    for name, amount in self.entrypoint_resources.items()),
                "orders.entrypoint_resources must map custom resource names to amounts >= 0, e.g. {train_node: 0.001} "
                "(CPU, GPU and memory are not asked this way)")


@dataclass(frozen=True, kw_only=True)
class ServingConfig:
    # The registry to serve: a folder or s3://bucket/prefix.
    registry: str = "data/registry"
    http: HttpSettings = field(default_factory=HttpSettings)
    pool: PoolSettings = field(default_factory=PoolSettings)
    # The pool's replicas and resources, and the limits of every style it serves.
    defaults: EndpointSettings = field(default_factory=EndpointSettings)
    # Styles with an application of their own ({dedicated: true, ...overrides of `defaults`}), by name.
    styles: dict = field(default_factory=dict)
    # Ray runtime_env every application runs in, where the nodes lack the project (on Kubernetes:
    # {working_dir: <zip URL of this repository>, pip: [...]}); empty where it is installed (cluster.yaml).
    runtime_env: dict = field(default_factory=dict)
    # Orders for new styles over HTTP (POST /orders): off unless enabled.
    orders: OrdersSettings = field(default_factory=OrdersSettings)

    def __post_init__(self):
        require(not self.defaults.dedicated, "defaults.dedicated must be false: mark single styles dedicated under `styles`")
        for name, overrides in self.styles.items():
            validate_style_name(name)
            require(isinstance(overrides, dict), f"styles.{name} must be a mapping of endpoint settings")
            settings = self.for_style(name)  # validate now, not at deploy time
            own = sorted(set(overrides) - {"dedicated"})
            require(settings.dedicated or not own, f"styles.{name} sets {', '.join(own)}, but a style served "
                    "by the pool shares `defaults`: add `dedicated: true` to give it an application and settings of its own")

    def dedicated_styles(self) -> list[str]:
        return sorted(name for name in self.styles if self.for_style(name).dedicated)

    def for_style(self, name: str) -> EndpointSettings:
        values = {**dataclasses.asdict(self.defaults), **self.styles.get(name, {})}
        return build_settings(EndpointSettings, values, f"styles.{name}")


def load_serving_config(path: str | Path | None, **overrides) -> ServingConfig:
    values = {}
    if path is not None:
        if not Path(path).is_file():
            raise ValueError(f"serving config {str(path)!r} not found")
        values = yaml.safe_load(Path(path).read_text()) or {}
    values.update({key: value for key, value in overrides.items() if value is not None})
    return build_settings(ServingConfig, values, "")
