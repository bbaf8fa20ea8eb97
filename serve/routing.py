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
from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve._private.request_router import request_router

# The private names this relies on. Gone or renamed in another Ray, the leak may be back or the fix
# may break routing: fail where it is imported, saying so, rather than serve with either.
_RELIED_ON = ("_remove_pending_request_from_indices", "_pending_requests_by_model_id", "_multiplexed_model_id_fallback_match")
_missing = [name for name in _RELIED_ON if name not in inspect.getsource(request_router)]
if _missing:
    raise ImportError(f"serve/routing.py was written against Ray 2.60's request router, and Ray {ray.__version__}'s lacks "
                      f"{', '.join(_missing)}: check whether Serve still keeps a request per multiplexed model id "
                      "(ray/serve/_private/request_router/request_router.py) and update ForgetfulRouter, or pin ray==2.60.0")


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
