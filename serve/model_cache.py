"""The models a pool replica holds, by id, least recently used dropped first. No Ray.

What Serve's own multiplexed cache does not (ray/serve/multiplex.py, 2.60): it serialises every load
behind one lock, evicts before it loads, and so loses a healthy model to every load that fails (a
corrupt file, a deleted version) and makes a cold request wait for every other cold one. Here loads of
different ids run side by side (one load per id, its waiters share it), a model is dropped only after
its replacement has loaded, and an id whose load failed is refused for `failure_ttl_s` without
touching the store again (so is a loaded model found broken: `fail`). Loads run on threads of their own,
at most `max_concurrent_loads` at once, so that a burst of cold styles neither waits behind decoding
and forward passes in the default pool nor holds more than that many half-built models in memory. The
replica keeps using serve.multiplexed for what only it can do, telling the router which ids it holds
(serve/style_pool.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

# Why a model cannot be had, as a client is answered: the registry no longer has it (404), storage could
# not be read just now (503, retry), or the model itself is unusable (500: a corrupt file, non-finite output).
MISSING, TRANSIENT, BROKEN = "missing", "transient", "broken"


class ModelUnavailable(Exception):
    """A model could not be had just now: `kind` says why (MISSING, TRANSIENT or BROKEN), `retry_after_s`
    how long it stays refused."""

    def __init__(self, model_id: str, reason: str, kind: str, retry_after_s: float = 0.0):
        super().__init__(f"model {model_id!r} is unavailable: {reason}")
        self.model_id, self.reason, self.kind, self.retry_after_s = model_id, reason, kind, retry_after_s

    @property
    def missing(self) -> bool:
        return self.kind == MISSING


@dataclass
class CacheCounts:
    """What happened since the replica started; serve/metrics.py exports the same events."""

    hits: int = 0
    loads: int = 0
    failed_loads: int = 0
    refused: int = 0  # requests answered from the failure cache, without a load
    evictions: int = 0
    failed_models: int = 0  # loaded models dropped as unusable (fail)


class ModelCache:
    def __init__(self, load: Callable[[str], object], capacity: int, *, failure_ttl_s: float = 30.0, max_concurrent_loads: int = 2,
                 classify: Callable[[Exception], str] = lambda error: MISSING if isinstance(error, FileNotFoundError) else BROKEN,
                 on_event: Callable[[str, float], None] = lambda event, seconds: None, clock: Callable[[], float] = time.monotonic):
        """load(model_id) runs on one of the cache's own threads and returns the model or raises;
        classify(error) says which kind of failure it was. on_event(name, seconds) hears each event by its
        CacheCounts name (seconds: a load's time, else 0)."""
        self.load, self.capacity, self.failure_ttl_s = load, capacity, failure_ttl_s
        self.classify, self.on_event, self.clock = classify, on_event, clock
        self.loaders = ThreadPoolExecutor(max_workers=max_concurrent_loads, thread_name_prefix="model-load")
        self.models: OrderedDict[str, object] = OrderedDict()  # least recently used first
        self.loading: dict[str, asyncio.Future] = {}
        self.failures: dict[str, tuple[float, str, str]] = {}  # id -> (until, reason, kind)
        self.counts = CacheCounts()

    def resize(self, capacity: int, failure_ttl_s: float) -> None:
        """New limits for a running replica (its reconfigure): the least recently used models beyond the
        new capacity go now."""
        self.capacity, self.failure_ttl_s = capacity, failure_ttl_s
        self._evict_beyond_capacity()

    async def get(self, model_id: str):
        """The model, loading it if needed; ModelUnavailable when it cannot be had."""
        if model_id in self.models:
            self.models.move_to_end(model_id)
            self._event("hits")
            return self.models[model_id]
        failure = self.failures.get(model_id)
        if failure and failure[0] > self.clock():
            self._event("refused")
            raise ModelUnavailable(model_id, failure[1], failure[2], failure[0] - self.clock())
        if model_id not in self.loading:
            self.loading[model_id] = asyncio.ensure_future(self._load(model_id))
        return await asyncio.shield(self.loading[model_id])

    async def _load(self, model_id: str):
        started = self.clock()
        try:
            model = await asyncio.get_running_loop().run_in_executor(self.loaders, self.load, model_id)
        except Exception as error:
            # Only a description is kept: the exception's traceback would hold the failed load's memory.
            # Classified off the event loop: it may ask storage, which is slow exactly when it is failing.
            kind, reason = await asyncio.to_thread(self.classify, error), f"{type(error).__name__}: {str(error)[:200]}"
            self._remember_failure(model_id, reason, kind)
            self._event("failed_loads", self.clock() - started)
            raise ModelUnavailable(model_id, reason, kind, self.failure_ttl_s) from None
        finally:
            del self.loading[model_id]
        self.failures.pop(model_id, None)
        self.models[model_id] = model
        self._event("loads", self.clock() - started)
        self._evict_beyond_capacity()  # only now that the new one is in: a failed load drops nothing
        return model

    def fail(self, model_id: str, reason: str) -> None:
        """A loaded model found unusable (its output is not finite whatever the input): dropped, and
        refused for failure_ttl_s like a model whose load failed, so its requests get a clear error
        without touching the device again and the replica's other models stay."""
        if self.models.pop(model_id, None) is not None:
            self._remember_failure(model_id, reason, BROKEN)
            self._event("failed_models")

    def _remember_failure(self, model_id: str, reason: str, kind: str) -> None:
        now = self.clock()
        # Expired entries go here, not only when their id loads again: over weeks, ids that failed
        # once (deleted versions, probes of retired styles) would otherwise pile up.
        self.failures = {key: entry for key, entry in self.failures.items() if entry[0] > now}
        self.failures[model_id] = (now + self.failure_ttl_s, reason, kind)

    def _evict_beyond_capacity(self) -> None:
        while len(self.models) > self.capacity:
            self.models.popitem(last=False)
            self._event("evictions")

    def most_recent(self, where: Callable[[object], bool] = lambda model: True):
        """The most recently used model for which where(model) holds, or None."""
        return next((model for model in reversed(self.models.values()) if where(model)), None)

    def _event(self, name: str, seconds: float = 0.0) -> None:
        setattr(self.counts, name, getattr(self.counts, name) + 1)
        self.on_event(name, seconds)
