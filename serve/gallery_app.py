"""The root application: the web page, the JSON listing of styles, and JSON errors for unknown styles.

    GET /          the page: every style's thumbnail and name; pick or drop a photo, see the result
    GET /styles    [{name, version, endpoint, thumbnail_url, preview_url, metadata}, ...]
    GET /gallery/<style>/thumbnail.jpg, /gallery/<style>/preview.jpg
                   the pictures the page shows: served here, so that opening the page neither wakes a
                   style scaled to zero nor takes a place in a busy style's queue
    *   /styles/x  404 for a style not deployed (a deployed one is routed to its own application)
"""

from pathlib import Path

from fastapi.responses import HTMLResponse, Response
from ray import serve

from factory import registry
from factory.style_names import validate_style_name
from serve.errors import json_error, json_errors_api
from serve.style_app import public_metadata

PAGE = Path(__file__).with_name("page.html")
api = json_errors_api()


@serve.deployment(name="Gallery", ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class Gallery:
    def __init__(self, registry_uri: str, styles: dict[str, str]):
        self.page = PAGE.read_text()
        self.listing = []
        self.pictures: dict[tuple[str, str], bytes] = {}  # (style, file name) -> JPEG bytes, a few dozen KB each
        for name, version in sorted(styles.items()):
            metadata = registry.read_metadata(registry_uri, name, version)
            for filename in (registry.THUMBNAIL_FILE, registry.PREVIEW_FILE):
                self.pictures[name, filename] = registry.read_file(registry_uri, name, filename, version)
            self.listing.append({
                "name": name,
                "version": version,
                "endpoint": f"/styles/{name}",
                "thumbnail_url": f"/gallery/{name}/{registry.THUMBNAIL_FILE}",
                "preview_url": f"/gallery/{name}/{registry.PREVIEW_FILE}",
                "metadata": public_metadata(metadata),
            })

    @api.get("/", response_class=HTMLResponse)
    def page(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    @api.get("/styles")
    def styles(self) -> list[dict]:
        return self.listing

    @api.api_route("/gallery/{name}/{filename}", methods=["GET", "HEAD"])
    def picture(self, name: str, filename: str):
        picture = self.pictures.get((name, filename))
        if picture is None:
            return json_error(404, f"no picture {filename!r} for style {name!r}")
        return Response(picture, media_type="image/jpeg", headers={"Cache-Control": "max-age=300"})

    @api.api_route("/styles/{name:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
    def unknown_style(self, name: str):
        style = name.split("/", 1)[0]
        try:
            validate_style_name(style)
        except ValueError as error:
            return json_error(400, str(error))
        known = ", ".join(entry["name"] for entry in self.listing) or "none"
        return json_error(404, f"unknown style {style!r}; deployed styles: {known}")


def build_app(args: dict):
    """Application builder for Serve config files: args {registry, styles: {name: version}}."""
    return Gallery.bind(args["registry"], args.get("styles", {}))
