"""What the registry publishes, as clients see it: each style's current version, public metadata and
pictures, re-read every few seconds so that new and retrained styles appear without a redeploy.

No Ray and no torch: the front door holds one of these and stays a small process.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from factory import registry

logger = logging.getLogger(__name__)
PICTURES = (registry.THUMBNAIL_FILE, registry.PREVIEW_FILE)
READERS = 16  # registry reads in flight during a refresh


def public_metadata(metadata: dict) -> dict:
    """What clients may see of a model's metadata: never a storage location (the weights' path or
    bucket, the config's paths), only what kind of loss network trained it."""
    keep = ("style", "version", "published_at", "steps", "final_losses", "style_image_sha256", "throughput", "quality")
    public = {key: metadata[key] for key in keep if key in metadata}
    if "loss_network" in metadata:
        source = metadata["loss_network"].get("source", "")
        public["loss_network"] = {"kind": source.split(":", 1)[0], "random_weights": bool(metadata["loss_network"].get("random_weights"))}
    return public


@dataclass(frozen=True)
class PublishedStyle:
    name: str
    version: str
    metadata: dict  # public_metadata of the version
    pictures: dict = field(default_factory=dict)  # file name -> JPEG bytes (a few dozen KB each), read on first use

    @property
    def model_id(self) -> str:
        """The id the style pool loads and routes by: a retrained style is a new id."""
        return f"{self.name}:{self.version}"


def parse_model_id(model_id: str) -> tuple[str, str]:
    style, _, version = model_id.partition(":")
    return style, version


class RegistryView:
    def __init__(self, registry_uri: str, refresh_s: float):
        self.registry_uri = registry_uri
        self.refresh_s = refresh_s
        self.styles: dict[str, PublishedStyle] = {}
        self.refresh()

    def refresh(self) -> None:
        """Re-read every style's current.json; read metadata only for versions not seen before.

        current.json is written after every other file of a version, so a version seen here is complete.
        Styles are read side by side (on S3 each is a request or two). The dict is replaced in one
        assignment: a reader sees the old listing or the new one, never a mix.
        """
        names = registry.style_folders(self.registry_uri)
        with ThreadPoolExecutor(max_workers=READERS) as readers:
            found = dict(zip(names, readers.map(self._read, names)))
        styles = {name: style for name, style in found.items() if style is not None}
        added = sorted(set(styles) - set(self.styles))
        changed = sorted(name for name in set(styles) & set(self.styles) if styles[name].version != self.styles[name].version)
        if added or changed:
            logger.info("registry %s: %d style(s); new: %s; new versions: %s", self.registry_uri, len(styles), added or "none", changed or "none")
        self.styles = styles

    def _read(self, name: str) -> PublishedStyle | None:
        """The style as published now; None before its first current.json; the last one seen if unreadable."""
        try:
            version = registry.current_version(self.registry_uri, name)
            known = self.styles.get(name)
            if known is not None and known.version == version:
                return known
            return PublishedStyle(name, version, public_metadata(registry.read_metadata(self.registry_uri, name, version)))
        except registry.ModelNotFound:
            return None  # a folder whose first version is still being written
        except Exception as error:  # one broken style must not hide the others
            logger.warning("style %r: %s; serving what was last seen of it", name, error)
            return self.styles.get(name)

    def start_refreshing(self) -> None:
        threading.Thread(target=self._refresh_forever, name="registry-refresh", daemon=True).start()

    def _refresh_forever(self) -> None:
        while True:
            time.sleep(self.refresh_s)
            try:
                self.refresh()
            except Exception as error:  # the storage was unreachable: keep serving what was last seen
                logger.warning("registry %s not refreshed: %s", self.registry_uri, error)

    def picture(self, name: str, filename: str) -> bytes | None:
        style = self.styles.get(name)
        if style is None or filename not in PICTURES:
            return None
        if filename not in style.pictures:
            style.pictures[filename] = registry.read_file(self.registry_uri, name, filename, style.version)
        return style.pictures[filename]
