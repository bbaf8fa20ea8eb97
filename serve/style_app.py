"""A dedicated style's endpoint: a Ray Serve application of its own, mounted at /styles/<style>.

    POST /styles/<style>               the image (raw body or multipart field 'image') -> stylised image
         ?max_side=&strength=&preserve_colors=&format=jpeg|png|webp
    GET  /styles/<style>               the model's metadata
    GET  /styles/<style>/thumbnail.jpg, /styles/<style>/preview.jpg

A style gets one when the serving config marks it dedicated (a hot style, with replicas and autoscaling
of its own); every other style is served by the pool (serve/front_app.py, serve/style_pool.py). The
same HTTP interface either way.
"""

import asyncio

import ray
import torch
from fastapi import Request
from fastapi.responses import Response
from ray import serve
from ray.serve.config import RequestRouterConfig

from factory import registry
from serve import http_input, stylising
from serve.errors import json_errors_api
from serve.http_input import HTTPError
from serve.registry_view import public_metadata
from serve.routing import ForgetfulRouter
from serve.settings import EndpointSettings
from serve.style_model import StyleModel, reserved_device, static_shapes_for

api = json_errors_api()


# Serve's proxy calls a dedicated style with a model id taken from a client's serve_multiplexed_model_id
# header, as it calls the front door: the forgetful router keeps it from remembering one request per value.
@serve.deployment(name="StyleEndpoint", request_router_config=RequestRouterConfig(request_router_class=ForgetfulRouter))
@serve.ingress(api)
class StyleEndpoint:
    """The style's version is the constructor's (a new version is a new application version); the
    settings come as user_config through reconfigure, so a change to them replaces no replica."""

    def __init__(self, registry_uri: str, style: str, version: str):
        self.registry_uri, self.style, self.version = registry_uri, style, version
        self.device = reserved_device(ray.get_gpu_ids())
        self.settings = self.model = None
        self.thumbnail = registry.read_file(registry_uri, style, registry.THUMBNAIL_FILE, version)
        self.preview = registry.read_file(registry_uri, style, registry.PREVIEW_FILE, version)

    def reconfigure(self, config: dict) -> None:
        """{"settings": EndpointSettings' fields}: limits and batching change in place; the model is built
        again only when how it is built changes (compiling, batch pixels, compiled shapes)."""
        settings, model = EndpointSettings(**config.get("settings", {})), self.model
        if model is None or _how_the_model_is_built(settings) != _how_the_model_is_built(self.settings):
            # Built beside the one serving (requests keep flowing during a reconfigure), then swapped in.
            model = StyleModel(self.registry_uri, self.style, self.version, device=self.device, compile_on_cpu=settings.compile_on_cpu,
                               max_batch_pixels=settings.max_batch_pixels, static_shapes=static_shapes_for(self.device, settings))
            if model.static_shapes is not None:  # the warm shapes compiled before the replica takes traffic
                model.static_shapes.wait_until_idle()
        self.model, self.metadata, self.settings = model, model.metadata, settings
        self.run_batch.set_max_batch_size(settings.max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    # HEAD too: link checkers and caches ask it before GET (FastAPI's get() routes do not answer it).
    @api.api_route("/", methods=["GET", "HEAD"])
    def describe(self) -> dict:
        return public_metadata(self.metadata)

    @api.api_route("/thumbnail.jpg", methods=["GET", "HEAD"])
    def thumbnail(self) -> Response:
        return Response(self.thumbnail, media_type="image/jpeg", headers={"Cache-Control": "max-age=300"})

    @api.api_route("/preview.jpg", methods=["GET", "HEAD"])
    def preview(self) -> Response:
        return Response(self.preview, media_type="image/jpeg", headers={"Cache-Control": "max-age=300"})

    @api.post("/")
    async def stylise(self, request: Request) -> Response:
        http_input.refuse_routing_headers(request.headers)
        if request.query_params.get("blend"):  # before the body, as any bad option; its replicas hold this style's vector only
            raise HTTPError(400, f"style {self.metadata['style']!r} is served on its own application (dedicated), which "
                                 "does not blend: blends mix styles of one family in the shared pool (styles not marked dedicated)")
        data, options = await http_input.read_stylise_request(request, self.settings)
        image, timings_ms = await stylising.stylise_image(data, options, self.settings, self.run_batch)
        return http_input.stylised_response(image, options, self.metadata["style"], self.metadata["version"], timings_ms)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def run_batch(self, tensors: list[torch.Tensor]) -> list[stylising.ModelRun]:
        """Requests that arrived together; those of the same size run as one batch on the device."""
        return await asyncio.to_thread(stylising.run_model, self.model, tensors)

    def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy and replaces it."""
        self.model.check_health()


def _how_the_model_is_built(settings: EndpointSettings | None) -> tuple:
    if settings is None:
        return ()
    return (settings.compile_on_cpu, settings.max_batch_pixels, settings.compiled_shapes, settings.compile_after_requests,
            settings.max_compiled_pixels, tuple(settings.warm_shapes))


def build_app(args: dict):
    """Application builder for Serve config files: args {registry, style, version}; the settings are the
    deployment's user_config (args' optional `settings` are the default for a Python caller)."""
    return StyleEndpoint.options(user_config={"settings": args.get("settings", {})}).bind(args["registry"], args["style"], args["version"])
