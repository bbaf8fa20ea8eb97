"""Serve's request router, minus a leak that grows with every model id ever routed.

Ray 2.60's router indexes pending requests by multiplexed model id and drops a finished one only when
a request with the same id is routed again (ray/serve/_private/request_router/request_router.py,
_remove_pending_request_from_indices and _get_pending_request_matching_multiplexed_model_id). The
entry keeps the call's arguments: in the front door's handle to the pool, a whole uploaded photo per
"<style>:<version>" ever requested, so every retrain leaves one behind; in each HTTP proxy, one
request scope (headers included) per value a client ever sent in a serve_multiplexed_model_id
header. Measured here before the fix: 50 distinct ids of 1 MB kept 50 MB in the caller's router.
This router removes a request from that index when it leaves the router's queue, as it already does
from the index by request id. Set on the called deployment (request_router_config), Serve ships it by
value to every caller: the front door, and the proxies calling the front door.
"""

from __future__ import annotations

import inspect

import ray
from ray import serve
from ray.serve import api as serve_api
from ray.serve import multiplex
from ray.serve._private.request_router import request_router
from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter


def _require_private_names(module, names: tuple[str, ...], what: str) -> None:
    """Fail where this is imported, saying so, if another Ray lacks the private names relied on here: the
    leak may be back or the fix may break routing, and neither should be served silently."""
    try:
        source = inspect.getsource(module)
    except OSError:  # an install without sources: the names cannot be read, only the classes tried
        return
    missing = [name for name in names if name not in source]
    if missing:
        raise ImportError(f"serve/routing.py was written against Ray 2.60, and Ray {ray.__version__}'s {module.__name__} lacks "
                          f"{', '.join(missing)}: check {what} and update serve/routing.py, or pin ray==2.60.0")


_require_private_names(request_router, ("_remove_pending_request_from_indices", "_pending_requests_by_model_id",
                                        "_multiplexed_model_id_fallback_match"),
                       "whether Serve's router still keeps a request per multiplexed model id")
_require_private_names(multiplex, ("self.models", "_push_multiplexed_replica_info", "max_num_models_per_replica"),
                       "how serve.multiplexed tells the router what a replica holds")
_require_private_names(serve_api, ('"__serve_multiplex_wrapper"',), "where serve.multiplexed keeps its state")
MULTIPLEX_WRAPPER_ATTRIBUTE = "__serve_multiplex_wrapper"  # where serve.multiplexed keeps its state (ray/serve/api.py)


class ForgetfulRouter(PowerOfTwoChoicesRequestRouter):
    """Power of two choices, as Serve's default, forgetting each request once it is routed or cancelled."""

    def _remove_pending_request_from_indices(self, pending_request) -> None:
        super()._remove_pending_request_from_indices(pending_request)
        model_id = pending_request.metadata.multiplexed_model_id
        waiting = self._pending_requests_by_model_id.get(model_id) if model_id else None
        if waiting is None:
            return
        # By identity: deque.remove compares with ==, which for this dataclass compares the call's arguments
        # (numpy arrays raise ValueError and the entry would silently stay; torch tensors raise RuntimeError).
        for index, waiting_request in enumerate(waiting):  # a short deque: the requests of one id still waiting
            if waiting_request is pending_request:
                del waiting[index]
                break
        while waiting and waiting[0].future.done():
            waiting.popleft()
        if not waiting:
            del self._pending_requests_by_model_id[model_id]
            self._multiplexed_model_id_fallback_match.discard(model_id)


class HeldModels:
    """What Serve's router believes a replica holds, told through serve.multiplexed's bookkeeping (the only
    channel there is): announced when a load starts, so the next requests for a cold style come to the
    replica loading it, and withdrawn when the load fails, as Serve's own loader does
    (ray/serve/multiplex.py). Serve's loader itself would serialise every load behind one lock, so the
    replica loads with its own cache and tells the router here. One per replica: each serve.multiplexed
    wrapper starts a metrics pusher that runs for the life of the process."""

    def __init__(self, capacity: int):
        async def held(model_id: str) -> str:  # a plain function: serve.multiplexed keeps its state on it
            return model_id

        self._function = held
        self._report = serve.multiplexed(max_num_models_per_replica=capacity)(held)
        self._capacity = capacity

    async def announce(self, model_id: str) -> None:
        await self._report(model_id)
        self.resize(self._capacity)  # the wrapper is made on the first call, with the capacity it was given then

    def withdraw(self, model_id: str) -> None:
        wrapper = getattr(self._function, MULTIPLEX_WRAPPER_ATTRIBUTE, None)
        if wrapper is not None and wrapper.models.pop(model_id, None) is not None:
            wrapper._push_multiplexed_replica_info = True  # pushed at its next tick (0.1 s)

    def resize(self, capacity: int) -> None:
        """The router's list follows the cache's capacity (its least recently used ids drop as it fills)."""
        self._capacity = capacity
        wrapper = getattr(self._function, MULTIPLEX_WRAPPER_ATTRIBUTE, None)
        if wrapper is not None:
            wrapper.max_num_models_per_replica = capacity
