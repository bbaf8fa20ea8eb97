"""The models a pool replica holds, by id, least recently used dropped first. No Ray.

What Serve's own multiplexed cache does not (ray/serve/multiplex.py, 2.60): it serialises every load
behind one lock, evicts before it loads, and so loses a healthy model to every load that fails (a
corrupt file, a deleted version) and makes a cold request wait for every other cold one. Here loads of
different ids run side by side (one load per id, its waiters share it), a model is dropped only after
its replacement has loaded, and an id whose load failed is refused for `failure_ttl_s` without
touching the store again. The replica keeps using serve.multiplexed for what only it can do, telling
the router which ids it holds (serve/style_pool.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable


class ModelUnavailable(Exception):
    """A model could not be loaded just now; `missing` when the registry no longer has it (a 404)."""

    def __init__(self, model_id: str, reason: str, missing: bool):
        super().__init__(f"model {model_id!r} could not be loaded: {reason}")
        self.model_id, self.reason, self.missing = model_id, reason, missing


@dataclass
class CacheCounts:
    """What happened since the replica started; serve/metrics.py exports the same events."""

    hits: int = 0
    loads: int = 0
    failed_loads: int = 0
    refused: int = 0  # requests answered from the failure cache, without a load
    evictions: int = 0


class ModelCache:
    def __init__(self, load: Callable[[str], object], capacity: int, *, failure_ttl_s: float = 30.0,
                 is_missing: Callable[[Exception], bool] = lambda error: isinstance(error, FileNotFoundError),
                 on_event: Callable[[str, float], None] = lambda event, seconds: None, clock: Callable[[], float] = time.monotonic):
        """load(model_id) runs in a thread and returns the model or raises. on_event(name, seconds) hears
        each event by its CacheCounts name (seconds: a load's time, else 0)."""
        self.load, self.capacity, self.failure_ttl_s = load, capacity, failure_ttl_s
        self.is_missing, self.on_event, self.clock = is_missing, on_event, clock
        self.models: OrderedDict[str, object] = OrderedDict()  # least recently used first
        self.loading: dict[str, asyncio.Future] = {}
        self.failures: dict[str, tuple[float, str, bool]] = {}  # id -> (until, reason, missing)
        self.counts = CacheCounts()

    async def get(self, model_id: str):
        """The model, loading it if needed; ModelUnavailable when it cannot be had."""
        if model_id in self.models:
            self.models.move_to_end(model_id)
            self._event("hits")
            return self.models[model_id]
        failure = self.failures.get(model_id)
        if failure and failure[0] > self.clock():
            self._event("refused")
            raise ModelUnavailable(model_id, failure[1], failure[2])
        if model_id not in self.loading:
            self.loading[model_id] = asyncio.ensure_future(self._load(model_id))
        return await asyncio.shield(self.loading[model_id])

    async def _load(self, model_id: str):
        started = self.clock()
        try:
            model = await asyncio.to_thread(self.load, model_id)
        except Exception as error:
            # Only a description is kept: the exception's traceback would hold the failed load's memory.
            missing, reason = self.is_missing(error), f"{type(error).__name__}: {str(error)[:200]}"
            now = self.clock()
            # Expired entries go here, not only when their id loads again: over weeks, ids that failed
            # once (deleted versions, probes of retired styles) would otherwise pile up.
            self.failures = {key: entry for key, entry in self.failures.items() if entry[0] > now}
            self.failures[model_id] = (now + self.failure_ttl_s, reason, missing)
            self._event("failed_loads", self.clock() - started)
            raise ModelUnavailable(model_id, reason, missing) from None
        finally:
            del self.loading[model_id]
        self.failures.pop(model_id, None)
        self.models[model_id] = model
        self._event("loads", self.clock() - started)
        while len(self.models) > self.capacity:  # only now that the new one is in: a failed load drops nothing
            self.models.popitem(last=False)
            self._event("evictions")
        return model

    def most_recent(self):
        """The most recently used model (what a health check runs), or None."""
        return next(reversed(self.models.values()), None)

    def _event(self, name: str, seconds: float = 0.0) -> None:
        setattr(self.counts, name, getattr(self.counts, name) + 1)
        self.on_event(name, seconds)
