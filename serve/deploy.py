"""Deploy a registry's styles on Ray Serve, declaratively: the front door and style pool for all of
them, plus an application of its own for each style the serving config marks dedicated.

    python -m serve.deploy --registry data/registry                      # deploy to the local cluster
    python -m serve.deploy --config configs/serve.yaml --write serve_config.yaml --dry-run

It writes a Serve config file (the same one `serve deploy serve_config.yaml` or `serve run
serve_config.yaml` accepts) and applies it through the Ray dashboard's REST API, as `serve deploy`
does. Pooled styles are not in that config: the front door re-reads the registry, so publishing or
retraining them needs no deploy, and the config only changes with the serving config (or a dedicated
style's new version). Serve keeps the replicas of every application whose config is unchanged.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # the repository, not this script's folder: its onnx_model.py would shadow ONNX Runtime's own
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import yaml

from factory import registry, storage
from serve.settings import EndpointSettings, ServingConfig, load_serving_config

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
REPO_ROOT = Path(__file__).resolve().parent.parent
FRONT_APP = "front"
GRACE_S = 5.0  # past the request timeout, for the answer to leave the replica


def style_app_name(style: str) -> str:
    return f"style-{style}"


def deployment_options(settings: EndpointSettings, request_timeout_s: float) -> dict:
    """A deployment's options in the Serve config. Only `ray_actor_options` (and the application's `args`)
    make Serve replace replicas when they change; the replica counts, limits and periods here are updated
    in place, and `user_config` reaches running replicas through their `reconfigure`
    (ray/serve/_private/config.py: each DeploymentConfig field's update_type)."""
    return {
        "max_ongoing_requests": settings.max_ongoing_requests,
        "max_queued_requests": settings.max_queued_requests,
        "autoscaling_config": {
            "min_replicas": settings.min_replicas,
            "initial_replicas": max(1, settings.min_replicas),
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.target_ongoing_requests,
        },
        "ray_actor_options": {"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus,
                              **({"resources": settings.resources} if settings.resources else {})},
        # A replica being replaced or scaled down finishes what it holds: a request may take up to the
        # proxy's request timeout (Serve's default of 20 s would cut longer ones off mid-answer).
        "graceful_shutdown_timeout_s": request_timeout_s + GRACE_S,
        "health_check_period_s": settings.health_check_period_s,
        "health_check_timeout_s": settings.health_check_timeout_s,
    }


def front_application(config: ServingConfig, registry_uri: str) -> dict:
    """The front door (HTTP parsing, listing, page) and the style pool behind it, autoscaled as `defaults`
    says. The front takes twice what the pool can hold at once: when load exceeds the pool, the pool's
    queue overflows first and the front answers 503 in JSON with a message, rather than Serve's proxy
    answering its own plain-text 503.

    `args` holds only the registry: Serve hashes an application's args into every deployment's version
    (ray/serve/_private/deploy_utils.py, get_app_code_version), so anything there replaces every replica
    and drops every model cache when it changes. The settings travel as each deployment's user_config."""
    pool = config.defaults
    front_ongoing = 2 * (pool.max_ongoing_requests * pool.max_replicas + pool.max_queued_requests)
    front = dataclasses.replace(pool, min_replicas=1, num_cpus=config.pool.front_num_cpus, num_gpus=0.0, resources={},
                                max_ongoing_requests=front_ongoing, target_ongoing_requests=front_ongoing / 2)
    timeout_s = config.http.request_timeout_s
    shared = {"settings": dataclasses.asdict(pool), "pool": dataclasses.asdict(config.pool)}
    orders = order_desk_settings(config)
    return {
        "name": FRONT_APP,
        "route_prefix": "/",
        "import_path": "serve.front_app:build_app",
        "args": {"registry": registry_uri},
        "deployments": [
            # The dedicated styles: the listing says which ones answer on an application of their own (no blends there).
            {"name": "Front", **deployment_options(front, timeout_s),
             "user_config": {**copy.deepcopy(shared), "dedicated": config.dedicated_styles(), "request_timeout_s": timeout_s,
                             "orders": orders}},
            {"name": "StylePool", **deployment_options(pool, timeout_s), "user_config": copy.deepcopy(shared)},
            # One replica: it alone writes the orders' records (serve/order_desk.py).
            {"name": "OrderDesk", "num_replicas": 1, "user_config": orders},
        ],
    }


def order_desk_settings(config: ServingConfig) -> dict:
    """The orders' settings as the desk takes them: the jobs run from this checkout (where
    factory/train_orders.py is, and where the recipe's relative paths start) unless the config says."""
    orders = dataclasses.asdict(config.orders)
    orders["runtime_env"] = orders["runtime_env"] or copy.deepcopy(config.runtime_env)
    # An unset working_dir stays unset: the desk runs jobs from its own checkout, so that the written
    # config holds no path of the machine that wrote it (k8s/rayservice.yaml is such a config).
    if config.orders.enabled and not storage.is_s3(orders["training_config"]) and not orders["runtime_env"].get("working_dir"):
        working_dir = orders["working_dir"] or str(REPO_ROOT)
        if not Path(working_dir, orders["training_config"]).is_file():
            raise ValueError(f"orders.training_config {orders['training_config']!r} is not a file under {working_dir} "
                             "(orders.working_dir): name a factory config such as configs/tiny.yaml")
    return orders


def dedicated_application(config: ServingConfig, registry_uri: str, style: str, version: str) -> dict:
    """A dedicated style's application: a new version is a new application version (its replicas load
    it as they start); its settings reach running replicas as user_config."""
    settings = config.for_style(style)
    return {
        "name": style_app_name(style),
        "route_prefix": f"/styles/{style}",
        "import_path": "serve.style_app:build_app",
        "args": {"registry": registry_uri, "style": style, "version": version},
        "deployments": [{"name": "StyleEndpoint", **deployment_options(settings, config.http.request_timeout_s),
                         "user_config": {"settings": dataclasses.asdict(settings)}}],
    }


def build_serve_config(config: ServingConfig, published: list[str] | None = None) -> dict:
    """The Serve config (as `serve deploy` takes it): the front and pool, and the published dedicated
    styles (`published`: the registry's styles, when the caller has listed them already)."""
    registry_uri = storage.absolute(config.registry)
    dedicated = config.dedicated_styles()
    # Only dedicated styles are named in the config; without them it is written without reading the registry.
    if dedicated and published is None:
        published = registry.list_styles(registry_uri)
    applications = [front_application(config, registry_uri)]
    for style in dedicated:
        if style in published:  # one not trained yet gets its application when it is published and deployed
            applications.append(dedicated_application(config, registry_uri, style, registry.current_version(registry_uri, style)))
    if config.runtime_env:
        applications = [{**application, "runtime_env": config.runtime_env} for application in applications]
    http_options = dataclasses.asdict(config.http)
    return {
        "proxy_location": http_options.pop("proxy_location"),
        "http_options": http_options,
        "applications": applications,
    }


def _client(address: str):
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    return ServeSubmissionClient(address)


def apply(serve_config: dict, address: str) -> None:
    _client(address).deploy_applications(serve_config)


def wait_until_running(address: str, app_names: list[str], timeout_s: float = 300) -> dict:
    """Poll until every named application is RUNNING; raise with Serve's message if one fails."""
    deadline = time.time() + timeout_s
    while True:
        details = _client(address).get_serve_details()
        statuses = {name: details.get("applications", {}).get(name, {}) for name in app_names}
        failed = {name: app.get("message", "") for name, app in statuses.items() if app.get("status") == "DEPLOY_FAILED"}
        if failed:
            raise RuntimeError("deployment failed: " + "; ".join(f"{name}: {message[-500:]}" for name, message in failed.items()))
        if all(app.get("status") == "RUNNING" for app in statuses.values()):
            return details
        if time.time() > deadline:
            raise TimeoutError(f"applications not running after {timeout_s:.0f} s (see `serve status` and `ray status`: replicas may wait for CPUs or GPUs the cluster lacks): "
                               + ", ".join(f"{name}={app.get('status', 'absent')}" for name, app in statuses.items()))
        time.sleep(1)


def refuse_to_empty(registry_uri: str, published: list[str], address: str) -> None:
    """A wrong or empty registry path lists no styles; deploying it over running styles would take them all down."""
    if published:
        return
    running = sorted(_client(address).get_serve_details().get("applications", {}))
    if running:
        raise ValueError(
            f"the registry {registry_uri!r} has no published styles (a wrong path or an empty prefix?); deploying it "
            f"would stop serving every style of the running application(s) {', '.join(running[:5])}. Check the path, "
            "or pass --allow-empty to do it on purpose (styles published there later go live by themselves)"
        )


def warn_of_fixed_http_options(config: ServingConfig, address: str) -> None:
    """Serve starts its proxies with the http options of the first deploy and keeps them: a new port or
    request timeout is ignored (with only a line in the dashboard's log) until Serve is restarted."""
    details = _client(address).get_serve_details()
    if not details.get("applications"):  # Serve not started yet: this deploy's options are the ones it starts with
        return
    running = details.get("http_options") or {}
    for name in ("host", "port", "request_timeout_s", "keep_alive_timeout_s"):
        wanted, kept = getattr(config.http, name), running.get(name)
        if kept is not None and kept != wanted:
            print(f"warning: http.{name} is {wanted!r} in the serving config but Serve keeps {kept!r} until it is restarted "
                  "(`serve shutdown`, then deploy again); replicas' graceful shutdown follows the config's request timeout",
                  file=sys.stderr)


def deploy(config: ServingConfig, address: str, write: Path | None = None, wait: bool = True,
           allow_empty: bool = False) -> tuple[dict, list[str]]:
    """Apply the serving config; returns the Serve config and the registry's styles (listed once:
    on S3 a listing is a request or two per style)."""
    published = registry.list_styles(storage.absolute(config.registry))
    if not allow_empty:
        refuse_to_empty(storage.absolute(config.registry), published, address)
    warn_of_fixed_http_options(config, address)
    serve_config = build_serve_config(config, published)
    if write:
        write.write_text(yaml.safe_dump(serve_config, sort_keys=False))
    apply(serve_config, address)
    if wait:
        wait_until_running(address, [app["name"] for app in serve_config["applications"]])
    return serve_config, published


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="serving config YAML (per-style autoscaling, limits, HTTP port)")
    parser.add_argument("--registry", help="registry folder or s3:// prefix (overrides the config's)")
    parser.add_argument("--address", default=os.environ.get("RAY_DASHBOARD_ADDRESS", DEFAULT_DASHBOARD),
                        help=f"Ray dashboard address (default: $RAY_DASHBOARD_ADDRESS or {DEFAULT_DASHBOARD})")
    parser.add_argument("--write", type=Path, help="also write the Serve config file here (for serve deploy / serve run)")
    parser.add_argument("--dry-run", action="store_true", help="write the Serve config file only; deploy nothing")
    parser.add_argument("--no-wait", action="store_true", help="return once submitted, without waiting for RUNNING")
    parser.add_argument("--allow-empty", action="store_true",
                        help="deploy even when the registry lists no styles, removing every running style")
    args = parser.parse_args(argv)
    try:
        config = load_serving_config(args.config, registry=args.registry)
        if args.dry_run:
            serve_config = build_serve_config(config)
            text = yaml.safe_dump(serve_config, sort_keys=False)
            args.write.write_text(text) if args.write else print(text)
            return 0
        serve_config, styles = deploy(config, args.address, args.write, wait=not args.no_wait, allow_empty=args.allow_empty)
    except (ValueError, registry.ModelNotFound, RuntimeError, TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    host = serve_config["http_options"]["host"]
    base = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{serve_config['http_options']['port']}"
    dedicated = [app["route_prefix"].rsplit("/", 1)[1] for app in serve_config["applications"][1:]]
    print(f"deployed: page at {base}/, {len(styles)} style(s) at {base}/styles/<style>"
          + (f" ({len(dedicated)} dedicated: {', '.join(dedicated)})" if dedicated else "")
          + f"; styles published later go live within {config.pool.refresh_s:g} s, without a deploy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
