"""What the registry publishes, as clients see it: each style's current version, public metadata and
pictures, re-read every few seconds so that new and retrained styles appear without a redeploy, in
one conditional GET of the registry's index per refresh.

No Ray and no torch: the front door holds one of these and stays a small process.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from factory import registry, storage
from factory.style_names import validate_style_name
from serve import get_logger

logger = get_logger(__name__)
PICTURES = (registry.THUMBNAIL_FILE, registry.PREVIEW_FILE)
READERS = 16  # registry reads in flight during a refresh


def public_metadata(metadata: dict) -> dict:
    """What clients may see of a model's metadata: never a storage location (the weights' path or
    bucket, the config's paths), only what kind of loss network trained it."""
    keep = ("style", "version", "published_at", "steps", "final_losses", "style_image_sha256", "throughput", "quality",
            "architecture", "family")
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
    def family(self) -> dict | None:
        """The family version this style belongs to ({"name", "version", ...}), or None for a style with
        a network of its own."""
        return self.metadata.get("family")

    @property
    def model_id(self) -> str:
        """The id the style pool loads and routes by: a retrained style is a new id. Every style of one
        family version has its family's id, so Serve batches their requests together and a replica
        holds the family's network once."""
        if self.family is not None:
            return f"{FAMILY_MODEL_PREFIX}{self.family['name']}:{self.family['version']}"
        return f"{self.name}:{self.version}"


FAMILY_MODEL_PREFIX = "family/"  # "/" is in no style name (factory/style_names.py): a family's id is never a style's


@dataclass(frozen=True)
class ModelReference:
    """What a model id names: a style's version, or a family's version."""

    name: str
    version: str
    is_family: bool


def parse_model_id(model_id: str) -> ModelReference:
    is_family = model_id.startswith(FAMILY_MODEL_PREFIX)
    name, _, version = model_id.removeprefix(FAMILY_MODEL_PREFIX).partition(":")
    return ModelReference(name, version, is_family)


class RegistryView:
    """The registry's styles, re-read every refresh_s: from index.json with one conditional GET (nothing
    more when it is unchanged; one metadata read per new version), and from every style's current.json
    every full_refresh_s, or always for a registry without an index (factory/registry.py says why both)."""

    def __init__(self, registry_uri: str, refresh_s: float, full_refresh_s: float = 300.0, clock=time.monotonic):
        self.registry_uri = registry_uri
        self.refresh_s, self.full_refresh_s, self.clock = refresh_s, full_refresh_s, clock
        self.styles: dict[str, PublishedStyle] = {}
        self._index_tag: str | None = None
        self._index_pointers: dict[str, dict] = {}
        self.last_full_scan = -float("inf")
        self.refreshed_at = self.clock()  # of the last refresh that read the registry without an error
        self.refresh()

    def age_s(self) -> float:
        """Seconds since the registry was last read successfully: a stale listing shows here."""
        return self.clock() - self.refreshed_at

    def refresh(self) -> None:
        """Re-read which version of each style is current; read metadata only for versions not seen before.

        current.json is written after every other file of a version, so a version seen here is complete.
        The dict is replaced in one assignment: a reader sees the old listing or the new one, never a mix.
        """
        pointers = None if self.clock() - self.last_full_scan >= self.full_refresh_s else self._pointers_from_index()
        if pointers is None:
            pointers = registry.scan_pointers(self.registry_uri)
            self.last_full_scan = self.clock()
        else:
            pointers = self._not_behind(pointers)
        names = sorted(pointers)
        with ThreadPoolExecutor(max_workers=READERS) as readers:
            found = dict(zip(names, readers.map(lambda name: self._read(name, pointers[name]["version"]), names)))
        styles = {name: style for name, style in found.items() if style is not None}
        added = sorted(set(styles) - set(self.styles))
        changed = sorted(name for name in set(styles) & set(self.styles) if styles[name].version != self.styles[name].version)
        if added or changed:
            logger.info("registry %s: %d style(s); new: %s; new versions: %s", self.registry_uri, len(styles), added or "none", changed or "none")
        self.styles = styles
        self.refreshed_at = self.clock()

    def _not_behind(self, pointers: dict[str, dict]) -> dict[str, dict]:
        """The index's pointers, never behind what is served already: a publisher that wrote the index
        from an older read can drop a style or an update from it. A served style the index lacks is
        checked at its current.json (gone only if withdrawn); an older version does not replace a newer
        one (by publishing time: ISO 8601 in UTC, microseconds included, sorts as text)."""
        pointers = dict(pointers)
        for name in set(self.styles) - set(pointers):
            try:
                pointers[name] = registry.read_pointer(self.registry_uri, name)
            except registry.ModelNotFound:
                pass  # withdrawn
        for name, served in self.styles.items():
            if name in pointers and pointers[name].get("published_at", "") < served.metadata.get("published_at", ""):
                pointers[name] = {"version": served.version, "published_at": served.metadata["published_at"]}
        return pointers

    def _pointers_from_index(self) -> dict[str, dict] | None:
        """Every style's pointer from index.json (one conditional GET); None when the registry has no index."""
        try:
            data, self._index_tag = storage.read_if_changed(storage.join(self.registry_uri, registry.INDEX_FILE), self._index_tag)
        except FileNotFoundError:
            return None
        if data is not None:
            self._index_pointers = json.loads(data)["styles"]
        return self._index_pointers

    def _read(self, name: str, version: str) -> PublishedStyle | None:
        """The style at `version`, its metadata read once per version; the last one seen if unreadable."""
        known = self.styles.get(name)
        if known is not None and known.version == version:
            return known
        try:
            validate_style_name(name)  # index.json's names become URLs
            return PublishedStyle(name, version, public_metadata(registry.read_metadata(self.registry_uri, name, version)))
        except Exception as error:  # one broken style must not hide the others
            logger.warning("style %r: %s; serving what was last seen of it", name, error)
            return known

    def start_refreshing(self) -> None:
        threading.Thread(target=self._refresh_forever, name="registry-refresh", daemon=True).start()

    def _refresh_forever(self) -> None:
        while True:
            time.sleep(self.refresh_s)
            try:
                self.refresh()
            except Exception as error:  # the storage was unreachable: keep serving what was last seen
                logger.warning("registry %s not refreshed (last read %.0f s ago): %s", self.registry_uri, self.age_s(), error)

    def picture(self, name: str, filename: str) -> bytes | None:
        style = self.styles.get(name)
        if style is None or filename not in PICTURES:
            return None
        if filename not in style.pictures:
            style.pictures[filename] = registry.read_file(self.registry_uri, name, filename, style.version)
        return style.pictures[filename]
