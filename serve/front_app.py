"""The front door, the root application: the page, the listing, and every pooled style's endpoint.

    GET  /                 the page: every style's painting and preview; pick or drop a photo, see the result
    GET  /styles           [{name, version, endpoint, thumbnail_url, preview_url, metadata, dedicated}, ...]
    GET  /gallery/<style>/thumbnail.jpg, /gallery/<style>/preview.jpg   the page's pictures
    POST /styles/<style>   the image (raw body or multipart field 'image') -> stylised image
         ?max_side=&strength=&preserve_colors=&format=jpeg|png|webp
         &blend=starry_night:0.7,the_scream:0.3   styles of the path style's family, mixed (400 across families)
    GET  /styles/<style>   the model's metadata;  /styles/<style>/thumbnail.jpg, /styles/<style>/preview.jpg
    POST /orders           Authorization: Bearer <token>; a form with a painting and a name -> 202, the order
    GET  /orders, GET /orders/<id>, DELETE /orders/<id>   the token's orders, one, or cancel one

It parses requests (bounded, off the event loop) and hands the image to the style pool
(serve/style_pool.py) with the style's current version as the multiplexed model id (a family's
style: its family version, with the style or blend to run); the pool does the pixel work. The
registry is re-read every pool.refresh_s, so a style published or retrained while serving is live
within that time, without a deploy. A style marked dedicated has its own application
at /styles/<style>, which Serve routes to before this one (the longer route prefix wins).
"""


import asyncio
import hashlib
import time
from pathlib import Path

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.config import RequestRouterConfig
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from factory import orders, registry
from factory.style_names import validate_style_name
from serve import http_input
from serve.errors import json_errors_api
from serve.http_input import CLIENT_CLOSED, HTTPError
from serve.order_requests import parse_order_form
from serve.order_tokens import OrderTokens
from serve.registry_view import PICTURES, ListingCopy, PublishedStyle, RegistryView
from serve.routing import ForgetfulRouter
from serve.settings import EndpointSettings, HttpSettings, OrdersSettings, PoolSettings

PAGE = Path(__file__).with_name("page.html")
CACHED = {"Cache-Control": "max-age=300"}
api = json_errors_api()


class GcsListingCopy(ListingCopy):
    """The front door's last listing, in Ray's GCS key-value store: a replacement front replica that starts
    while storage is down, on any node, begins from it instead of an empty listing."""

    def __init__(self, registry_uri: str):
        self.key = f"listing/{hashlib.sha256(registry_uri.encode()).hexdigest()}".encode()

    def save(self, data: bytes) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(self.key, data, overwrite=True, namespace=KV_NAMESPACE)

    def load(self) -> bytes | None:
        from ray.experimental import internal_kv

        return internal_kv._internal_kv_get(self.key, namespace=KV_NAMESPACE)


KV_NAMESPACE = "style_factory"


# Serve's proxies call the front door with a model id taken from a client's serve_multiplexed_model_id
# header: the forgetful router keeps them from remembering one request per value ever sent.
@serve.deployment(name="Front", request_router_config=RequestRouterConfig(request_router_class=ForgetfulRouter))
@serve.ingress(api)
class Front:
    """The pool's handle and the registry are the constructor's arguments; the settings come as
    user_config through reconfigure, so that changing them replaces no replica."""

    def __init__(self, pool: DeploymentHandle, registry_uri: str, desk: DeploymentHandle | None = None):
        self.pool, self.registry_uri, self.desk = pool, registry_uri, desk
        self.page = PAGE.read_text()
        self.view = None
        self.tokens = OrderTokens()

    def reconfigure(self, config: dict) -> None:
        """Serve calls this after the constructor and whenever user_config changes: {"settings":
        EndpointSettings' fields, "pool": PoolSettings', "dedicated": [styles], "request_timeout_s": the
        proxy's}."""
        from serve.metrics import FrontMetrics

        self.settings = EndpointSettings(**config.get("settings", {}))
        self.pool_settings = PoolSettings(**config.get("pool", {}))
        self.dedicated = frozenset(config.get("dedicated", ()))
        self.request_timeout_s = config.get("request_timeout_s", HttpSettings.request_timeout_s)
        self.order_settings = OrdersSettings(**config.get("orders", {}))
        if self.tokens.tokens_file != self.order_settings.tokens_file:
            self.tokens = OrderTokens(self.order_settings.tokens_file)
        if self.view is None:
            self.metrics = FrontMetrics(self.pool_settings.metric_top_styles)
            self.view = RegistryView(self.registry_uri, self.pool_settings.refresh_s, self.pool_settings.full_refresh_s,
                                     mass_removal_hold_s=self.pool_settings.mass_removal_hold_s,
                                     copy=GcsListingCopy(self.registry_uri), on_refresh=self.metrics.refreshed)
            self.view.start_refreshing()
        else:  # the refreshing thread reads these each time round
            self.metrics.style_labels.top = self.pool_settings.metric_top_styles
            self.view.refresh_s, self.view.full_refresh_s = self.pool_settings.refresh_s, self.pool_settings.full_refresh_s
            self.view.mass_removal_hold_s = self.pool_settings.mass_removal_hold_s

    def check_health(self) -> None:
        """Serve calls this every health_check_period_s. It fails only for what a new replica would fix: a
        refresh that has stopped trying (a dead or hung thread). Storage that cannot be read is not such a
        thing: the front keeps serving its last listing, says how old it is (a header, a metric), and a
        replacement would start from that same listing."""
        age = self.view.age_s()
        self.metrics.refresh_age.set(min(age, 10**9))
        self.metrics.styles.set(len(self.view.styles))
        if self.view.stuck_s() > self.pool_settings.stale_after_s:
            raise RuntimeError(f"the registry refresh has not finished an attempt for {self.view.stuck_s():.0f} s "
                               f"(pool.stale_after_s: {self.pool_settings.stale_after_s:g})")

    def _age_header(self) -> dict[str, str]:
        """How old the listing is: a client (or the edge's log) can tell a stale registry from a live one."""
        age = self.view.age_s()
        return {"X-Registry-Age-Seconds": str(int(age)) if age < 10**9 else "never-read"}

    @api.get("/", response_class=HTMLResponse)
    def page(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    @api.get("/styles")
    def styles(self) -> JSONResponse:
        return JSONResponse([{
            "name": style.name,
            "version": style.version,
            "endpoint": f"/styles/{style.name}",
            # Served here: opening the page neither wakes a style scaled to zero nor queues at a busy one.
            "thumbnail_url": f"/gallery/{style.name}/{registry.THUMBNAIL_FILE}",
            "preview_url": f"/gallery/{style.name}/{registry.PREVIEW_FILE}",
            "metadata": style.metadata,
            "dedicated": style.name in self.dedicated,  # on an application of its own, which does not blend
        } for _, style in sorted(self.view.styles.items())], headers=self._age_header())

    @api.api_route("/gallery/{name}/{filename}", methods=["GET", "HEAD"])
    @api.api_route("/styles/{name}/{filename}", methods=["GET", "HEAD"])
    async def picture(self, name: str, filename: str) -> Response:
        style = self._published(name)
        if filename not in PICTURES:
            raise HTTPError(404, f"no picture {filename!r} for style {name!r}: there are {', '.join(PICTURES)}")
        return Response(await asyncio.to_thread(self.view.picture, style.name, filename), media_type="image/jpeg", headers=CACHED)

    # HEAD too: link checkers and caches ask it before GET (FastAPI's get() routes do not answer it).
    @api.api_route("/styles/{name}", methods=["GET", "HEAD"])
    @api.api_route("/styles/{name}/", methods=["GET", "HEAD"])
    def describe(self, name: str) -> dict:
        return self._published(name).metadata

    @api.post("/styles/{name}")
    @api.post("/styles/{name}/")
    async def stylise(self, name: str, request: Request) -> Response:
        started, status = time.perf_counter(), 500
        published = name in self.view.styles
        try:
            http_input.refuse_routing_headers(request.headers)
            self._published(name)  # an unknown style is a 404 before its body is read
            data, options = await http_input.read_stylise_request(request, self.settings)
            # One listing for the style and its blend: a refresh while the body arrived (a family retrained,
            # its styles published one by one) must not pair a style with its partners' other version.
            listing = self.view.styles
            style = self._published(name, listing)
            status, answer, details = await self._run_in_pool(style, data, options, self._style_mix(style, options.blend, listing))
            if status != 200:
                raise HTTPError(status, answer, retry_after_s=details.get("retry_after_s"))
            response = http_input.stylised_response(answer, options, style.name, style.version, details)
            response.headers.update(self._age_header())
            return response
        except HTTPError as error:
            status = error.status
            raise
        except asyncio.CancelledError:
            # Serve cancels a request whose client went away (499, not a server error), and one past the
            # proxy's request timeout, which the client was answered 408.
            status = 408 if time.perf_counter() - started >= self.request_timeout_s - 0.5 else CLIENT_CLOSED
            raise
        finally:
            self.metrics.answered(name if published else None, status, time.perf_counter() - started)

    def _style_mix(self, style: PublishedStyle, blend: tuple[tuple[str, float], ...],
                   listing: dict[str, PublishedStyle]) -> tuple[tuple[str, str, float], ...]:
        """What a family's model mixes for this request, as (style, version, weight): the style alone, or
        the blend; () for a style with a network of its own. A blend mixes styles of the path's style's
        family version, trained together on one network: naming any other style is a 400 (mixing
        pictures of separate networks would be a different, slower thing: run them and average)."""
        if style.family is None:
            if blend:
                raise HTTPError(400, f"style {style.name!r} has a network of its own, and blends mix styles of one family: "
                                     "GET /styles shows each style's family (metadata.family.name)")
            return ()
        if not blend:
            return ((style.name, style.version, 1.0),)
        family = style.family
        mix = []
        for name, weight in blend:
            other = self._published(name, listing)  # 404 for a style that is not published
            if other.family is None or other.family["name"] != family["name"]:
                raise HTTPError(400, f"blend names {name!r}, which is not in family {family['name']!r} of {style.name!r}: "
                                     "a blend mixes styles of one family (GET /styles shows each style's family)")
            if other.family["version"] != family["version"]:
                raise HTTPError(400, f"blend names {name!r}, trained on family {family['name']!r} version {other.family['version']}, "
                                     f"while {style.name!r} is on version {family['version']}: retrain it into the current family to blend them")
            mix.append((other.name, other.version, weight))
        return tuple(mix)

    async def _run_in_pool(self, style: PublishedStyle, data: bytes, options: http_input.StyliseOptions,
                           mix: tuple[tuple[str, str, float], ...]) -> tuple[int, bytes | str, dict[str, float]]:
        try:
            return await self.pool.options(multiplexed_model_id=style.model_id).stylise.remote(data, options, mix)
        except BackPressureError:
            return 503, "the style pool is at capacity (its queue is full); retry in a few seconds", {}
        except (DeploymentUnavailableError, ReplicaUnavailableError):
            return 503, "the style pool is starting or restarting; retry in a few seconds", {}
        except RayActorError:  # the replica died mid-request (ActorDiedError), or is unreachable for now
            return 503, "the style pool replica running this request stopped; retry in a few seconds", {}

    def _published(self, name: str, listing: dict[str, PublishedStyle] | None = None) -> PublishedStyle:
        listing = self.view.styles if listing is None else listing
        try:
            validate_style_name(name)
        except ValueError as error:
            raise HTTPError(400, str(error)) from None
        style = listing.get(name)
        if style is None:
            known = sorted(listing)
            listed = ", ".join(known[:20]) + (f" and {len(known) - 20} more (GET /styles)" if len(known) > 20 else "")
            raise HTTPError(404, f"unknown style {name!r}; published styles: {listed or 'none'}")
        return style

    # -- orders (serve/order_desk.py) -------------------------------------------------------------------

    def _order_client(self, request: Request) -> str:
        """The ordering client's token fingerprint; 404 where orders are off, 401 without a known token."""
        if not self.order_settings.enabled or self.desk is None:
            raise HTTPError(404, "this server takes no orders (the serving config's orders.enabled is false)")
        owner = self.tokens.owner(request.headers.get("authorization"))
        if owner is None:
            raise HTTPError(401, "ordering a style needs a token: send Authorization: Bearer <token> (the operator "
                                 "issues them; docs/orders.md)" + ("" if request.headers.get("authorization") else ", none was sent"))
        return owner

    async def _ask_desk(self, method: str, *args) -> JSONResponse:
        try:
            answer = await getattr(self.desk, method).remote(*args)
        except (BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError, RayActorError):
            raise HTTPError(503, "the order desk is starting or restarting; retry in a few seconds", 5) from None
        if answer.status >= 400:
            raise HTTPError(answer.status, answer.body, answer.retry_after_s)
        return JSONResponse(self._as_served(answer.body), status_code=answer.status,
                            headers={"Location": answer.body["url"]} if answer.status == 202 else None)

    def _as_served(self, body):
        """An order the registry has published but this front's listing does not have yet is still
        "publishing" here: the style's URL is given once a request to it will be answered."""
        if isinstance(body, list):
            return [self._as_served(item) for item in body]
        style = self.view.styles.get(body.get("name"))
        if body.get("status") == "published" and (style is None or style.version != body.get("version")):
            body = {**body, "status": "publishing", "eta_s": self.pool_settings.refresh_s}
            for key in ("style_url", "preview_url"):
                body.pop(key, None)
        return body

    @api.post("/orders")
    async def place_order(self, request: Request) -> JSONResponse:
        owner = self._order_client(request)  # before the body: an anonymous client uploads nothing
        body = await http_input.read_body(request, self.order_settings.max_painting_bytes + 64 * 1024, self.settings.body_timeout_s)
        form = await asyncio.to_thread(parse_order_form, body, request.headers.get("content-type", ""), self.order_settings)
        if form.name in self.view.styles:
            raise HTTPError(409, f"the style name {form.name!r} is taken (GET /styles lists the published ones); choose another")
        return await self._ask_desk("place", owner, form.name, form.family, form.width, form.painting, form.painting_info)

    @api.get("/orders")
    async def list_orders(self, request: Request) -> JSONResponse:
        return await self._ask_desk("list", self._order_client(request))

    @api.get("/orders/{order_id}")
    async def get_order(self, order_id: str, request: Request) -> JSONResponse:
        return await self._ask_desk("get", self._order_client(request), self._order_id(order_id))

    @api.delete("/orders/{order_id}")
    async def cancel_order(self, order_id: str, request: Request) -> JSONResponse:
        return await self._ask_desk("cancel", self._order_client(request), self._order_id(order_id))

    @staticmethod
    def _order_id(order_id: str) -> str:
        try:
            return orders.check_order_id(order_id)
        except ValueError as error:
            raise HTTPError(404, str(error)) from None

    @api.api_route("/videos", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
    @api.api_route("/videos/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
    def videos(self, rest: str = ""):
        """Where a client looks for video jobs: not here, and it says where (docs/bulk-and-video.md says why)."""
        raise HTTPError(501, http_input.VIDEO_REFUSAL)

    @api.api_route("/styles/{name:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
    def anything_else(self, name: str, request: Request):
        style = self._published(name.split("/", 1)[0])
        if request.method not in ("GET", "HEAD", "POST"):
            raise HTTPError(405, f"method {request.method} not allowed on {request.url.path}: POST an image to "
                                 f"/styles/{style.name}, GET it for its metadata")
        raise HTTPError(404, f"no such path: {request.url.path} (style {style.name!r} has /, /thumbnail.jpg and /preview.jpg)")


def build_app(args: dict):
    """Application builder for Serve config files: args {registry}. The settings are each deployment's
    user_config (serve/deploy.py writes them there); args' optional {settings, pool, dedicated, orders} are the
    defaults for a caller that builds the application in Python (serve.run(build_app(...)))."""
    from serve.style_pool import StylePool  # only the builder needs it: the front's replicas stay free of torch

    from serve.order_desk import OrderDesk

    shared = {"settings": args.get("settings", {}), "pool": args.get("pool", {})}
    pool = StylePool.options(user_config=shared).bind(args["registry"])
    desk = OrderDesk.options(user_config=args.get("orders", {})).bind(args["registry"])
    return Front.options(user_config={**shared, "dedicated": list(args.get("dedicated", [])), "orders": args.get("orders", {})}
                         ).bind(pool, args["registry"], desk)
