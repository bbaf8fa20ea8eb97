"""The style pool: one Serve deployment whose every replica can run any published style.

Models load on first use (sha256-checked, weights only) into a least-recently-used cache sized by
`pool.model_cache_mb` (serve/model_cache.py: loads side by side, nothing evicted for a load that
fails, failing ids refused for a while). Serve's model multiplexing routes each request to a replica
that already holds its style: the model id is "<style>:<version>" (PublishedStyle.model_id), so a
retrained style is a new id and its old version ages out of the cache; serve.multiplexed here only
tells the router which ids the replica holds. The router forgets each request once it is routed
(serve/routing.py), or every retrain would leave a photo behind in the front door. Requests for one
style that arrive together run as one batch; Serve splits a batch by model id, and stacking different
styles' weights into one pass (torch.func.vmap) measured slower on CPU (bench/pool_batching.py). The
styles of a family share one model id, "family/<family>:<version>": the replica holds the family's
network once, with a few KiB per style (serve/style_vectors.py), and requests for any of its styles
and blends share batches, each image carrying its own style vector through one forward pass. On
the CPU a replica runs as many batches side by side as it reserved cores, each on one thread; on a
GPU, one at a time.
"""

from __future__ import annotations

import asyncio
import functools
import time

import ray
import torch
from ray import serve
from ray.serve.config import RequestRouterConfig

from factory import registry, storage
from serve import get_logger, stylising
from serve.http_input import HTTPError, StyliseOptions
from serve.model_cache import BROKEN, MISSING, TRANSIENT, ModelCache, ModelUnavailable
from serve.registry_view import PublishedStyle, parse_model_id, public_metadata
from serve.routing import ForgetfulRouter, HeldModels
from serve.settings import EndpointSettings, PoolSettings
from serve.style_model import RunFailure, StyleModel, model_bytes, reserved_device, static_shapes_for

logger = get_logger(__name__)


@serve.deployment(name="StylePool", request_router_config=RequestRouterConfig(request_router_class=ForgetfulRouter))
class StylePool:
    """The registry is the constructor's only argument (a new registry is a new pool); the settings come
    as user_config through reconfigure, so that an operator's change reaches running replicas without
    replacing them and dropping their models."""

    async def __init__(self, registry_uri: str):
        from serve.metrics import PoolMetrics

        self.registry_uri = registry_uri
        self.metrics = PoolMetrics()
        self.device = reserved_device(ray.get_gpu_ids())
        self.settings = self.pool = self.cache = None
        self.running = 0  # model runs in progress (a metric counts the ones that overlap)
        on_cpu = self.device.type == "cpu"
        if on_cpu:
            torch.set_num_threads(1)  # process-wide: every run in this replica computes on its calling thread
        # On the CPU, batches of different styles run side by side, one per reserved core, each on one
        # thread (torch and ONNX Runtime release the GIL while they compute): one run at a time on all
        # cores spent more CPU per image (OpenMP threads spin at every barrier, worse while the front,
        # the proxy and decoding share the cores). On a GPU batches would only queue: one at a time.
        # Cores are an actor option, so they are fixed for the replica's life.
        self.slots = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))) if on_cpu else 1
        self.device_slots = asyncio.Semaphore(self.slots)

    async def reconfigure(self, config: dict) -> None:
        """Serve calls this after the constructor and whenever the deployment's user_config changes
        ({"settings": EndpointSettings' fields, "pool": PoolSettings'}). Limits, batching, the cache's size
        and the prewarm list change in place; a change to how models are built (the CPU runtime, batch
        pixels, compiled shapes, concurrent loads) starts a new cache, the process and its other state
        staying. Requests keep flowing meanwhile: each takes the cache and settings it started with."""
        settings, pool = EndpointSettings(**config.get("settings", {})), PoolSettings(**config.get("pool", {}))
        runtime = "cuda" if self.device.type == "cuda" else pool.cpu_runtime
        # One model more than the budget is held for a moment: the old one goes once the new one loaded.
        capacity = max(2, pool.model_cache_mb * 2**20 // model_bytes(runtime) - 1)
        if self.cache is None:
            # Made once for the replica's life: each serve.multiplexed wrapper and serve.batch queue starts a
            # task that runs as long as the process (ray/serve/multiplex.py, ray/serve/batching.py).
            self.held = HeldModels(capacity)
            # Serve splits a batch by style and, by default, starts the next batch only when every style of
            # the last one is done: cores would idle behind a batch's last style. As many batches as slots.
            self.run_batch = serve.batch(max_batch_size=settings.max_batch_size, max_concurrent_batches=self.slots,
                                         batch_wait_timeout_s=settings.batch_wait_timeout_s)(self._run_batch)
        if self.cache is None or _how_models_are_built(settings, pool) != _how_models_are_built(self.settings, self.pool):
            self.cache = self._new_cache(settings, pool, runtime, capacity)
        else:
            self.cache.resize(capacity, pool.failure_ttl_s)
        self.held.resize(capacity)
        self.run_batch.set_max_batch_size(settings.max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self.settings, self.pool = settings, pool
        await self._warm_up(pool.prewarm)

    def _new_cache(self, settings: EndpointSettings, pool: PoolSettings, runtime: str, capacity: int) -> ModelCache:
        # StyleModel's fast path: fp16 on a GPU, ONNX Runtime on the CPU (for versions that have the export).
        # What a load builds with is bound here: a reconfigure while a load runs cannot mix two settings.
        static_shapes = static_shapes_for(self.device, settings)  # GPU: compiled once, shared by every style
        load = functools.partial(self._load, fast=runtime != "torch", static_shapes=static_shapes,
                                 max_batch_pixels=settings.max_batch_pixels, cpu_precision="int8" if runtime == "onnxruntime-int8" else "fp32")
        return ModelCache(load, capacity, failure_ttl_s=pool.failure_ttl_s, max_concurrent_loads=pool.max_concurrent_loads,
                          on_event=self.metrics.cache_event, classify=self._classify)

    def _classify(self, error: Exception) -> str:
        """A failed load as a client is answered: a version the registry no longer has is missing (404),
        but a registry that cannot be read at all (a moved folder, storage down) is transient (503)."""
        if isinstance(error, (registry.ModelNotFound, FileNotFoundError)):
            return MISSING if _registry_readable(self.registry_uri) else TRANSIENT
        if isinstance(error, (OSError, TimeoutError)) or type(error).__module__.startswith(("botocore", "urllib3")):
            return TRANSIENT
        return BROKEN

    async def _warm_up(self, styles: list[str]) -> None:
        """Before the replica takes traffic: the warm shapes compiled (GPU), the prewarm styles loaded."""
        static_shapes = self.cache.load.keywords["static_shapes"]
        if static_shapes is not None:
            await asyncio.to_thread(static_shapes.wait_until_idle)
        for style in styles:
            try:
                metadata = await asyncio.to_thread(registry.read_metadata, self.registry_uri, style)
                published = PublishedStyle(style, metadata["version"], public_metadata(metadata))
                model = await self.cache.get(published.model_id)
                await self.held.announce(published.model_id)
                if model.style_vectors is not None:
                    await asyncio.to_thread(model.style_vectors.vector, style, published.version)
            except Exception as error:  # a style that cannot be prewarmed must not keep the replica from starting
                logger.warning("pool.prewarm names %r, which cannot be loaded: %s", style, error)

    def _load(self, model_id: str, *, fast: bool, static_shapes, max_batch_pixels: int, cpu_precision: str) -> StyleModel:
        reference = parse_model_id(model_id)
        # Without ONNX Runtime's memory arena: a few hundred styles' sessions must fit the cache budget.
        # One thread: runs go side by side, one per core (cpu_threads only applies to ONNX Runtime, CPU only).
        model = StyleModel(self.registry_uri, reference.name, reference.version, device=self.device, fast=fast,
                           max_batch_pixels=max_batch_pixels, cpu_threads=1, memory_arena=False,
                           static_shapes=static_shapes, family=reference.is_family, cpu_precision=cpu_precision)
        model.model_id = model_id
        return model

    async def stylise(self, data: bytes, options: StyliseOptions,
                      mix: tuple[tuple[str, str, float], ...] = ()) -> tuple[int, bytes | str, dict[str, float]]:
        """(200, image bytes, each step's milliseconds) or (status, message, {"retry_after_s": ...} or {}): an
        HTTPError does not survive Ray's pickling intact. mix: for a family's model, the (style, version,
        weight) to run. A request that waited for its model to load says so: a "load" step first."""
        cache, settings = self.cache, self.settings  # a reconfigure meanwhile does not change this request's
        try:
            started, cold = time.perf_counter(), serve.get_multiplexed_model_id() not in cache.models
            model = await self._model_for_request(cache)
            load_ms = {"load": round(1e3 * (time.perf_counter() - started), 1)} if cold else {}
            style = await self._style_vector(model, mix)
            image, timings_ms = await stylising.stylise_image(data, options, settings, lambda tensor: self.run_batch(model, tensor, style))
        except HTTPError as error:
            return error.status, error.message, {"retry_after_s": error.retry_after_s} if error.retry_after_s else {}
        self.metrics.ran(timings_ms)
        return 200, image, {**load_ms, **timings_ms}

    async def _model_for_request(self, cache: ModelCache) -> StyleModel:
        requested = serve.get_multiplexed_model_id()
        if requested not in cache.models and requested not in cache.failures:
            # Told to the router before the load, as Serve's own multiplexing does (ray/serve/multiplex.py):
            # the next requests for this style come here and share the load instead of each replica loading it.
            await self.held.announce(requested)
        try:
            model = await cache.get(requested)
        except ModelUnavailable as error:
            self.held.withdraw(requested)
            if error.kind == MISSING:
                raise HTTPError(404, f"model {requested!r} is no longer in the registry; retry to get its current version") from None
            if error.kind == TRANSIENT:
                raise HTTPError(503, f"model {requested!r} cannot be read from the registry just now ({error.reason.split(':')[0]}); "
                                     f"retry in {error.retry_after_s:.0f} s", retry_after_s=error.retry_after_s) from None
            raise HTTPError(500, f"model {requested!r} is unusable ({error.reason[:160]}); it is refused for "
                                 f"{error.retry_after_s:.0f} s, then tried again") from None
        await self.held.announce(requested)  # most recently used, in the router's list as in the cache
        return model

    async def _style_vector(self, model: StyleModel, mix: tuple[tuple[str, str, float], ...]) -> torch.Tensor | None:
        """The vector a family's model runs this request with (the style's own, or the blend); None for a
        style's own network. Vectors not held yet are read here, before the request joins a batch."""
        if model.style_vectors is None:
            return None
        try:
            return await asyncio.to_thread(model.style_vectors.blend, mix)
        except (registry.ModelNotFound, FileNotFoundError):
            raise HTTPError(404, f"a style of {model.name} named by this request is no longer in the registry; retry to get its current version") from None
        except Exception as error:
            logger.warning("%s: style vectors %s unusable: %s", model.name, [item[:2] for item in mix], error)
            raise HTTPError(500, f"a style vector of {model.name} could not be loaded ({type(error).__name__}): see the pool's log") from None

    async def _run_batch(self, models: list[StyleModel], tensors: list[torch.Tensor],
                         styles: list[torch.Tensor | None]) -> list[stylising.ModelRun]:
        """Requests that arrived together. Serve splits batches by model id, so they share one model (a
        family's: each image with its own style vector); those of the same size run as one batch."""
        async with self.device_slots:
            self.running += 1
            if self.running > 1:
                self.metrics.side_by_side.inc()
            try:
                model = models[0]
                runs = await asyncio.to_thread(stylising.run_model, model, tensors, styles if model.style_vectors is not None else None)
                await self._judge(model, runs)
                return runs
            finally:
                self.running -= 1

    async def _judge(self, model: StyleModel, runs: list[stylising.ModelRun]) -> None:
        """What a batch says about its model: a picture proves it good (the health check runs such a model);
        a non-finite picture from a model whose own check fails too (a plain grey input, a family's neutral
        style) condemns the model, not the replica: it is dropped and refused for failure_ttl_s. (The check
        runs on a thread; the cache is changed here, on the event loop, where every other change happens.)"""
        if any(not isinstance(run.output, RunFailure) for run in runs):
            model.proven = True
        elif any(not run.output.out_of_memory for run in runs):
            try:
                await asyncio.to_thread(model.check_health)
            except Exception as error:
                logger.warning("%s is unusable and refused for %g s: %s", model.model_id, self.pool.failure_ttl_s, error)
                self.cache.fail(model.model_id, str(error))
                self.held.withdraw(model.model_id)

    async def check_health(self) -> None:
        """Serve calls this every health_check_period_s; raising three times in a row replaces the replica.
        A replica whose device went bad (a sticky CUDA error) would otherwise answer 500 forever while
        routing keeps sending it the styles it holds: a tiny forward through the most recent model that
        has produced a picture must be finite. Never a model a client merely asked for: a broken one
        would get replica after replica replaced, each losing its cache (its requests fail instead)."""
        model = self.cache.most_recent(where=lambda model: getattr(model, "proven", False)) if self.cache else None
        if model is not None:
            async with self.device_slots:
                await asyncio.to_thread(model.check_health)


def _how_models_are_built(settings: EndpointSettings | None, pool: PoolSettings | None) -> tuple:
    """The settings a loaded model depends on: when one changes, the cache starts again."""
    if settings is None or pool is None:
        return ()
    return (pool.cpu_runtime, pool.max_concurrent_loads, settings.max_batch_pixels, settings.compiled_shapes,
            settings.compile_after_requests, settings.max_compiled_pixels, tuple(settings.warm_shapes))


def _registry_readable(registry_uri: str) -> bool:
    """Whether the registry's root can be read now (its index or its folder): a model file missing from a
    readable registry was deleted; from an unreadable one, storage is down or moved."""
    try:
        return storage.exists(storage.join(registry_uri, registry.INDEX_FILE)) or storage.has_content(registry_uri)
    except Exception:
        return False
