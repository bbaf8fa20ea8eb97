"""What operators scrape: the serving application's own metrics, through Ray Serve's metrics API, so
Prometheus takes them from every node's metrics port together with Ray's (the names get Ray's `ray_`
prefix and counters a `_total` suffix; Serve adds the deployment, replica and application tags).
serve/grafana_dashboard.json charts them. Created inside a replica: the metric objects need one.

Cardinality is bounded whatever the number of styles or versions: no metric is tagged with a model
id, the latency histogram has no style tag, and the request counter names only the most requested
styles (StyleLabels), the others counting as "other".
"""

from __future__ import annotations

import time
from collections import Counter

from ray.serve import metrics

SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
# The names as Prometheus sees them; serve/grafana_dashboard.json and the tests read these.
EXPORTED = {
    "requests": "ray_style_factory_requests_total",
    "request_seconds": "ray_style_factory_request_seconds",
    "refresh_age": "ray_style_factory_registry_refresh_age_seconds",
    "styles": "ray_style_factory_registry_styles",
    "cache_events": "ray_style_factory_model_cache_events_total",
    "load_seconds": "ray_style_factory_model_load_seconds",
    "queue_seconds": "ray_style_factory_queue_seconds",
    "model_seconds": "ray_style_factory_model_seconds",
    "side_by_side": "ray_style_factory_runs_side_by_side_total",
    "refreshes": "ray_style_factory_registry_refreshes_total",
}
OTHER_STYLES = "other"


class StyleLabels:
    """The style tag a request is counted under: its own name while it is among the `top` most requested
    styles (re-ranked every `every_s`), else "other". A front replica thus exports at most `top` styles
    plus those that were once among them; the ranking's counts are one integer per published style."""

    def __init__(self, top: int, every_s: float = 60.0, clock=time.monotonic):
        self.top, self.every_s, self.clock = top, every_s, clock
        self.counts: Counter[str] = Counter()
        self.named: frozenset[str] = frozenset()
        self.ranked_at = -float("inf")

    def label(self, style: str) -> str:
        self.counts[style] += 1
        if self.clock() - self.ranked_at >= self.every_s or (style not in self.named and len(self.named) < self.top):
            self.named = frozenset(name for name, _ in self.counts.most_common(self.top))
            self.ranked_at = self.clock()
        return style if style in self.named else OTHER_STYLES


class FrontMetrics:
    """The front door's: every stylise request by style (the most requested ones) and status, its latency
    by status, and the registry's freshness."""

    def __init__(self, top_styles: int = 50):
        self.style_labels = StyleLabels(top_styles)
        self.requests = metrics.Counter("style_factory_requests", "stylise requests answered, by HTTP status and style "
                                        "(the most requested styles by name, the rest as 'other'; 499: the client left)",
                                        tag_keys=("style", "status"))
        self.request_seconds = metrics.Histogram("style_factory_request_seconds", "seconds from a stylise request's "
                                                 "arrival at the front door to its answer", boundaries=SECONDS, tag_keys=("status",))
        self.refresh_age = metrics.Gauge("style_factory_registry_refresh_age_seconds",
                                         "seconds since the front door last read the registry successfully")
        self.styles = metrics.Gauge("style_factory_registry_styles", "styles the front door serves")
        self.refreshes = metrics.Counter("style_factory_registry_refreshes", "registry refreshes by result: ok, failed "
                                         "(storage unreadable: the last listing is served), held (most styles vanished at "
                                         "once: they are kept)", tag_keys=("result",))

    def answered(self, style: str | None, status: int, seconds: float) -> None:
        """style: a published style's name, or None for one that is not (a client's made-up names must not grow the metric)."""
        self.requests.inc(tags={"style": OTHER_STYLES if style is None else self.style_labels.label(style), "status": str(status)})
        self.request_seconds.observe(seconds, tags={"status": str(status)})

    def refreshed(self, result: str) -> None:
        self.refreshes.inc(tags={"result": result})


class PoolMetrics:
    """A pool replica's: its model cache (hits, loads, failed loads, refusals, evictions), load times,
    and where a request's time went (waiting for a batch and a core or GPU, running the model)."""

    def __init__(self):
        self.cache_events = metrics.Counter("style_factory_model_cache_events", "model cache events: hits, loads, "
                                            "failed_loads, refused (a recent failure), evictions, failed_models (unusable output)", tag_keys=("event",))
        self.load_seconds = metrics.Histogram("style_factory_model_load_seconds", "seconds to load a model into a "
                                              "pool replica (read, sha256 check, build)", boundaries=SECONDS)
        self.queue_seconds = metrics.Histogram("style_factory_queue_seconds", "seconds a request waited for a batch and a "
                                               "free core or GPU", boundaries=SECONDS)
        self.model_seconds = metrics.Histogram("style_factory_model_seconds", "seconds a request's batch ran in the model",
                                               boundaries=SECONDS)
        self.side_by_side = metrics.Counter("style_factory_runs_side_by_side", "model runs that started while another "
                                            "run of the same replica was still going (CPU replicas run one per core)")

    def cache_event(self, event: str, seconds: float) -> None:
        self.cache_events.inc(tags={"event": event})
        if event == "loads":
            self.load_seconds.observe(seconds)

    def ran(self, timings_ms: dict[str, float]) -> None:
        self.queue_seconds.observe(timings_ms["queue"] / 1e3)
        self.model_seconds.observe(timings_ms["model"] / 1e3)
