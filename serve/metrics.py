"""What operators scrape: the serving application's own metrics, through Ray Serve's metrics API, so
Prometheus takes them from every node's metrics port together with Ray's (the names get Ray's `ray_`
prefix and counters a `_total` suffix; Serve adds the deployment, replica and application tags).
serve/grafana_dashboard.json charts them. Created inside a replica: the metric objects need one.
"""

from __future__ import annotations

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
}


class FrontMetrics:
    """The front door's: every stylise request by style and status, its latency, and the registry's freshness."""

    def __init__(self):
        self.requests = metrics.Counter("style_factory_requests", "stylise requests answered, by style and HTTP status",
                                        tag_keys=("style", "status"))
        self.request_seconds = metrics.Histogram("style_factory_request_seconds", "seconds from a stylise request's "
                                                 "arrival at the front door to its answer", boundaries=SECONDS, tag_keys=("style", "status"))
        self.refresh_age = metrics.Gauge("style_factory_registry_refresh_age_seconds",
                                         "seconds since the front door last read the registry successfully")
        self.styles = metrics.Gauge("style_factory_registry_styles", "styles the front door serves")

    def answered(self, style: str, status: int, seconds: float) -> None:
        tags = {"style": style, "status": str(status)}
        self.requests.inc(tags=tags)
        self.request_seconds.observe(seconds, tags=tags)


class PoolMetrics:
    """A pool replica's: its model cache (hits, loads, failed loads, refusals, evictions), load times,
    and where a request's time went (waiting for a batch and a core or GPU, running the model)."""

    def __init__(self):
        self.cache_events = metrics.Counter("style_factory_model_cache_events", "model cache events: hits, loads, "
                                            "failed_loads, refused (a recent failure), evictions", tag_keys=("event",))
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
