"""The style pool: one Serve deployment whose every replica can run any published style.

Models load on first use (sha256-checked, weights only) into a least-recently-used cache sized by
`pool.model_cache_mb`. Serve's model multiplexing routes each request to a replica that already holds
its style: the model id is "<style>:<version>" (PublishedStyle.model_id), so a retrained style is a
new id and its old version ages out of the cache. Requests for one style that arrive together run as
one batch; Serve splits a batch by model id, and stacking different styles' weights into one pass
(torch.func.vmap) measured slower on CPU (bench/pool_batching.py), so there is nothing to gain from
undoing that split. On the CPU a replica runs as many batches side by side as it reserved cores, each
on one thread; on a GPU, one at a time.
"""

from __future__ import annotations

import asyncio
import logging

import ray
import torch
from ray import serve

from factory import registry
from serve import stylising
from serve.http_input import HTTPError, StyliseOptions
from serve.registry_view import parse_model_id
from serve.settings import EndpointSettings, PoolSettings
from serve.style_model import StyleModel, model_bytes, reserved_device, static_shapes_for

logger = logging.getLogger(__name__)


@serve.deployment(name="StylePool", health_check_period_s=10, health_check_timeout_s=30)
class StylePool:
    def __init__(self, registry_uri: str, settings: dict, pool: dict):
        self.registry_uri = registry_uri
        self.settings = EndpointSettings(**settings)
        pool = PoolSettings(**pool)
        self.device = reserved_device(ray.get_gpu_ids())
        runtime = "cuda" if self.device.type == "cuda" else pool.cpu_runtime
        # StyleModel's fast path: fp16 on a GPU, ONNX Runtime on the CPU (for versions that have the export).
        self.fast = runtime != "torch"
        self.capacity = max(2, pool.model_cache_mb * 2**20 // model_bytes(runtime))
        self.static_shapes = static_shapes_for(self.device, self.settings)  # GPU: compiled once, shared by every style

        async def load(model_id: str) -> StyleModel:
            return await self._load(model_id)

        # Wired here, not as a decorator: the cache's size comes from the serving config.
        self.model = serve.multiplexed(max_num_models_per_replica=self.capacity)(load)
        # On the CPU, batches of different styles run side by side, one per reserved core, each on one
        # thread (torch and ONNX Runtime release the GIL while they compute): one run at a time on all
        # cores spent more CPU per image (OpenMP threads spin at every barrier, worse while the front,
        # the proxy and decoding share the cores). On a GPU batches would only queue: one at a time.
        on_cpu = self.device.type == "cpu"
        if on_cpu:
            torch.set_num_threads(1)  # process-wide: every run in this replica computes on its calling thread
        slots = max(1, int(self.settings.num_cpus)) if on_cpu else 1
        self.device_slots = asyncio.Semaphore(slots)
        # Serve splits a batch by style and, by default, starts the next batch only when every style of
        # the last one is done: cores would idle behind a batch's last style. As many batches as slots.
        self.run_batch = serve.batch(max_batch_size=self.settings.max_batch_size, max_concurrent_batches=slots,
                                     batch_wait_timeout_s=self.settings.batch_wait_timeout_s)(self._run_batch)

    async def _load(self, model_id: str) -> StyleModel:
        style, version = parse_model_id(model_id)
        # Without ONNX Runtime's memory arena: a few hundred styles' sessions must fit the cache budget.
        # One thread: runs go side by side, one per core (cpu_threads only applies to ONNX Runtime, CPU only).
        return await asyncio.to_thread(StyleModel, self.registry_uri, style, version, device=self.device, fast=self.fast,
                                       max_batch_pixels=self.settings.max_batch_pixels, cpu_threads=1,
                                       memory_arena=False, static_shapes=self.static_shapes)

    async def stylise(self, data: bytes, options: StyliseOptions) -> tuple[int, bytes | str, dict[str, float]]:
        """(200, image bytes, each step's milliseconds) or (status, message, {}): an HTTPError does not
        survive Ray's pickling intact."""
        try:
            model = await self._model_for_request()
            image, timings_ms = await stylising.stylise_image(data, options, self.settings, lambda tensor: self.run_batch(model, tensor))
        except HTTPError as error:
            return error.status, error.message, {}
        return 200, image, timings_ms

    async def _model_for_request(self) -> StyleModel:
        requested = serve.get_multiplexed_model_id()
        try:
            return await self.model(requested)
        except (registry.ModelNotFound, FileNotFoundError):
            raise HTTPError(404, f"model {requested!r} is no longer in the registry; retry to get its current version") from None
        except Exception as error:
            logger.exception("loading model %r failed", requested)
            raise HTTPError(500, f"model {requested!r} could not be loaded: {type(error).__name__}") from None

    async def _run_batch(self, models: list[StyleModel], tensors: list[torch.Tensor]) -> list[stylising.ModelRun]:
        """Requests that arrived together. Serve splits batches by model id, so they share one model;
        those of the same size run as one batch on the device."""
        async with self.device_slots:
            return await asyncio.to_thread(stylising.run_model, models[0], tensors)
