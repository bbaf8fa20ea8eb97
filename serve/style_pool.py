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

import ray
import torch
from ray import serve
from ray.serve.config import RequestRouterConfig

from factory import registry
from serve import get_logger, stylising
from serve.http_input import HTTPError, StyliseOptions
from serve.model_cache import ModelCache, ModelUnavailable
from serve.registry_view import PublishedStyle, parse_model_id, public_metadata
from serve.routing import ForgetfulRouter
from serve.settings import EndpointSettings, PoolSettings
from serve.style_model import StyleModel, model_bytes, reserved_device, static_shapes_for

logger = get_logger(__name__)


@serve.deployment(name="StylePool", health_check_period_s=10, health_check_timeout_s=30,
                  request_router_config=RequestRouterConfig(request_router_class=ForgetfulRouter))
class StylePool:
    async def __init__(self, registry_uri: str, settings: dict, pool: dict):
        from serve.metrics import PoolMetrics

        self.registry_uri = registry_uri
        self.settings = EndpointSettings(**settings)
        pool = PoolSettings(**pool)
        self.metrics = PoolMetrics()
        self.device = reserved_device(ray.get_gpu_ids())
        runtime = "cuda" if self.device.type == "cuda" else pool.cpu_runtime
        # StyleModel's fast path: fp16 on a GPU, ONNX Runtime on the CPU (for versions that have the export).
        self.fast = runtime != "torch"
        # One model more than the budget is held for a moment: the old one goes once the new one loaded.
        capacity = max(2, pool.model_cache_mb * 2**20 // model_bytes(runtime) - 1)
        self.static_shapes = static_shapes_for(self.device, self.settings)  # GPU: compiled once, shared by every style
        self.cache = ModelCache(self._load, capacity, failure_ttl_s=pool.failure_ttl_s, on_event=self.metrics.cache_event,
                                is_missing=lambda error: isinstance(error, (registry.ModelNotFound, FileNotFoundError)))
        # The router learns which ids a replica holds only through serve.multiplexed's bookkeeping: it is
        # handed every id our cache served, in the same order, and evicts in step with it. (A plain
        # function: serve.multiplexed keeps its state on the function, or on the instance of a method.)
        async def held(model_id: str) -> str:
            return model_id

        self.report_held = serve.multiplexed(max_num_models_per_replica=capacity)(held)
        # On the CPU, batches of different styles run side by side, one per reserved core, each on one
        # thread (torch and ONNX Runtime release the GIL while they compute): one run at a time on all
        # cores spent more CPU per image (OpenMP threads spin at every barrier, worse while the front,
        # the proxy and decoding share the cores). On a GPU batches would only queue: one at a time.
        on_cpu = self.device.type == "cpu"
        if on_cpu:
            torch.set_num_threads(1)  # process-wide: every run in this replica computes on its calling thread
        slots = max(1, int(self.settings.num_cpus)) if on_cpu else 1
        self.device_slots = asyncio.Semaphore(slots)
        self.running = 0  # model runs in progress (a metric counts the ones that overlap)
        # Serve splits a batch by style and, by default, starts the next batch only when every style of
        # the last one is done: cores would idle behind a batch's last style. As many batches as slots.
        self.run_batch = serve.batch(max_batch_size=self.settings.max_batch_size, max_concurrent_batches=slots,
                                     batch_wait_timeout_s=self.settings.batch_wait_timeout_s)(self._run_batch)
        await self._warm_up(pool.prewarm)

    async def _warm_up(self, styles: list[str]) -> None:
        """Before the replica takes traffic: the warm shapes compiled (GPU), the prewarm styles loaded."""
        if self.static_shapes is not None:
            await asyncio.to_thread(self.static_shapes.wait_until_idle)
        for style in styles:
            try:
                metadata = await asyncio.to_thread(registry.read_metadata, self.registry_uri, style)
                published = PublishedStyle(style, metadata["version"], public_metadata(metadata))
                model = await self.cache.get(published.model_id)
                await self.report_held(published.model_id)
                if model.style_vectors is not None:
                    await asyncio.to_thread(model.style_vectors.vector, style, published.version)
            except Exception as error:  # a style that cannot be prewarmed must not keep the replica from starting
                logger.warning("pool.prewarm names %r, which cannot be loaded: %s", style, error)

    def _load(self, model_id: str) -> StyleModel:
        reference = parse_model_id(model_id)
        # Without ONNX Runtime's memory arena: a few hundred styles' sessions must fit the cache budget.
        # One thread: runs go side by side, one per core (cpu_threads only applies to ONNX Runtime, CPU only).
        return StyleModel(self.registry_uri, reference.name, reference.version, device=self.device, fast=self.fast,
                          max_batch_pixels=self.settings.max_batch_pixels, cpu_threads=1, memory_arena=False,
                          static_shapes=self.static_shapes, family=reference.is_family)

    async def stylise(self, data: bytes, options: StyliseOptions,
                      mix: tuple[tuple[str, str, float], ...] = ()) -> tuple[int, bytes | str, dict[str, float]]:
        """(200, image bytes, each step's milliseconds) or (status, message, {}): an HTTPError does not
        survive Ray's pickling intact. mix: for a family's model, the (style, version, weight) to run."""
        try:
            model = await self._model_for_request()
            style = await self._style_vector(model, mix)
            image, timings_ms = await stylising.stylise_image(data, options, self.settings, lambda tensor: self.run_batch(model, tensor, style))
        except HTTPError as error:
            return error.status, error.message, {}
        self.metrics.ran(timings_ms)
        return 200, image, timings_ms

    async def _model_for_request(self) -> StyleModel:
        requested = serve.get_multiplexed_model_id()
        try:
            model = await self.cache.get(requested)
        except ModelUnavailable as error:
            if error.missing:
                raise HTTPError(404, f"model {requested!r} is no longer in the registry; retry to get its current version") from None
            raise HTTPError(500, f"model {requested!r} could not be loaded ({error.reason.split(':')[0]}); "
                                 "it is retried in a little while") from None
        await self.report_held(requested)
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
                styles = styles if models[0].style_vectors is not None else None
                return await asyncio.to_thread(stylising.run_model, models[0], tensors, styles)
            finally:
                self.running -= 1

    async def check_health(self) -> None:
        """Serve calls this every 10 s; raising three times in a row replaces the replica. A replica whose
        device went bad (a sticky CUDA error) would otherwise answer 500 forever while routing keeps
        sending it the styles it holds: a tiny forward through the most recent model must be finite."""
        model = self.cache.most_recent()
        if model is not None:
            async with self.device_slots:
                await asyncio.to_thread(model.check_health)
