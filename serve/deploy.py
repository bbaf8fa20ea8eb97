"""Deploy every style in a registry as its own Ray Serve application, declaratively.

    python -m serve.deploy --registry data/registry                      # deploy to the local cluster
    python -m serve.deploy --config configs/serve.yaml --write serve_config.yaml --dry-run

It writes a Serve config file (the same one `serve deploy serve_config.yaml` or `serve run
serve_config.yaml` accepts) and applies it through the Ray dashboard's REST API, as `serve deploy`
does. Serve compares it with what runs: an application whose config is unchanged (same model
version, same settings) keeps its replicas; a new or retrained style deploys alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from factory import registry, storage
from serve.settings import ServingConfig, load_serving_config

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
GALLERY_APP = "gallery"


def style_app_name(style: str) -> str:
    return f"style-{style}"


def build_serve_config(config: ServingConfig) -> dict:
    """The Serve config (as `serve deploy` takes it) for every published style in the registry."""
    registry_uri = storage.absolute(config.registry)
    versions = {style: registry.current_version(registry_uri, style) for style in registry.list_styles(registry_uri)}
    applications = [{
        "name": GALLERY_APP,
        "route_prefix": "/",
        "import_path": "serve.gallery_app:build_app",
        "args": {"registry": registry_uri, "styles": versions},
    }]
    for style, version in versions.items():
        settings = config.for_style(style)
        applications.append({
            "name": style_app_name(style),
            "route_prefix": f"/styles/{style}",
            "import_path": "serve.style_app:build_app",
            "args": {"registry": registry_uri, "style": style, "version": version, "settings": dataclasses.asdict(settings)},
            "deployments": [{
                "name": "StyleEndpoint",
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
            }],
        })
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": config.http.host, "port": config.http.port},
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


def refuse_to_empty(serve_config: dict, registry_uri: str, address: str) -> None:
    """A wrong or empty registry path lists no styles; deploying that would remove every running style."""
    if len(serve_config["applications"]) > 1:
        return
    running = sorted(name for name in _client(address).get_serve_details().get("applications", {}) if name != GALLERY_APP)
    if running:
        raise ValueError(
            f"the registry {registry_uri!r} has no published styles (a wrong path or an empty prefix?); deploying it "
            f"would remove the {len(running)} running application(s) {', '.join(running[:5])}. Check the path, "
            "or pass --allow-empty to undeploy them on purpose"
        )


def deploy(config: ServingConfig, address: str, write: Path | None = None, wait: bool = True, allow_empty: bool = False) -> dict:
    serve_config = build_serve_config(config)
    if not allow_empty:
        refuse_to_empty(serve_config, storage.absolute(config.registry), address)
    if write:
        write.write_text(yaml.safe_dump(serve_config, sort_keys=False))
    apply(serve_config, address)
    if wait:
        wait_until_running(address, [app["name"] for app in serve_config["applications"]])
    return serve_config


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
        serve_config = deploy(config, args.address, args.write, wait=not args.no_wait, allow_empty=args.allow_empty)
    except (ValueError, registry.ModelNotFound, RuntimeError, TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    styles = [app["route_prefix"] for app in serve_config["applications"][1:]]
    host = serve_config["http_options"]["host"]
    base = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{serve_config['http_options']['port']}"
    print(f"deployed {len(styles)} style(s): page at {base}/, endpoints: " + ", ".join(f"{base}{route}" for route in styles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
