"""What the registry publishes, as clients see it: each style's current version, public metadata and
pictures, re-read every few seconds so that new and retrained styles appear without a redeploy, in
one conditional GET of the registry's index per refresh.

Storage fails: a registry that cannot be read is never taken for an empty one. A refresh that fails
keeps the last listing (its age is `age_s`), a refresh that would drop most styles at once is held
back for `mass_removal_hold_s`, and a view that cannot read storage when it starts begins from the last
listing any view of this registry kept (`ListingCopy`: the front door keeps it in Ray's GCS).

No Ray and no torch: the front door holds one of these and stays a small process.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from factory import registry, storage
from factory.style_names import is_style_name, validate_style_name
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
    pointed_at: str = ""  # when its pointer was written (publish or rollback): a stale index never takes it back

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


class RegistryUnreadable(OSError):
    """The registry's root is not there (a folder moved or unmounted): storage trouble, not an empty registry."""


class ListingCopy:
    """Where a view keeps its last listing for the next view of the same registry (a replacement replica
    that starts while storage is down). This one keeps it in memory; the front door's lives in Ray's GCS."""

    def __init__(self):
        self.data: bytes | None = None

    def save(self, data: bytes) -> None:
        self.data = data

    def load(self) -> bytes | None:
        return self.data


class RegistryView:
    """The registry's styles, re-read every refresh_s: from index.json with one conditional GET (nothing
    more when it is unchanged; one metadata read per new version), and from every style's current.json
    every full_refresh_s, or always for a registry without an index (factory/registry.py says why both).

    on_refresh(result) hears each refresh's outcome: "ok", "failed" (storage unreadable: the last listing
    stays), or "held" (most styles vanished at once: they stay, see mass_removal_hold_s)."""

    def __init__(self, registry_uri: str, refresh_s: float, full_refresh_s: float = 300.0, clock=time.monotonic,
                 mass_removal_hold_s: float = 900.0, copy: ListingCopy | None = None, on_refresh=lambda result: None,
                 first_read_timeout_s: float = 30.0):
        """The first read of the registry is waited for at most first_read_timeout_s (storage that hangs
        rather than fails): past it, or if it fails, the view starts from the last listing kept."""
        self.registry_uri = registry_uri
        self.refresh_s, self.full_refresh_s, self.clock = refresh_s, full_refresh_s, clock
        self.mass_removal_hold_s, self.copy, self.on_refresh = mass_removal_hold_s, copy or ListingCopy(), on_refresh
        self.styles: dict[str, PublishedStyle] = {}
        self._index_tag: str | None = None
        self._index_pointers: dict[str, dict] = {}
        self.last_full_scan = -float("inf")
        self.removal_held_since: float | None = None  # when a refresh first lost most styles at once
        self.attempt_started: float | None = None  # while a refresh runs: when it began
        self._thread: threading.Thread | None = None
        self.refreshed_at = self.clock()  # of the last refresh that read the registry without an error
        failure: list[Exception] = []
        self._first_read = threading.Thread(target=self._read_first, args=(failure,), name="registry-first-read", daemon=True)
        self._first_read.start()
        self._first_read.join(first_read_timeout_s)
        if self._first_read.is_alive() or failure:  # storage down or hanging as the replica starts
            self.styles = self._from_copy()
            self.refreshed_at = -float("inf")  # never read by this view: stale from the start
            why = failure[0] if failure else f"no answer within {first_read_timeout_s:g} s"
            logger.warning("registry %s unreadable as this view starts (%s); serving the last listing kept (%d styles) "
                           "until it can be read", self.registry_uri, why, len(self.styles))

    def _read_first(self, failure: list) -> None:
        try:
            self.refresh()
        except Exception as error:
            failure.append(error)

    def age_s(self) -> float:
        """Seconds since the registry was last read successfully: a stale listing shows here."""
        return self.clock() - self.refreshed_at

    def stuck_s(self) -> float:
        """Seconds the refresh has not been trying: how long the current attempt has run, or forever if the
        refreshing thread has died. An attempt that fails quickly is not stuck: storage is down, and a
        new replica would read it no better."""
        if self._thread is not None and not self._thread.is_alive():
            return float("inf")
        started = self.attempt_started  # read once: the refreshing thread sets it to None when done
        return 0.0 if started is None else self.clock() - started

    def refresh(self) -> None:
        """Re-read which version of each style is current; read metadata only for versions not seen before.

        current.json is written after every other file of a version, so a version seen here is complete.
        The dict is replaced in one assignment: a reader sees the old listing or the new one, never a mix.
        """
        pointers = None if self.clock() - self.last_full_scan >= self.full_refresh_s else self._pointers_from_index()
        if pointers is None:
            if not storage.is_s3(self.registry_uri) and not Path(self.registry_uri).is_dir():
                raise RegistryUnreadable(f"the registry folder {self.registry_uri} is not there (moved, unmounted?)")
            pointers = registry.scan_pointers(self.registry_uri)
            self.last_full_scan = self.clock()
        else:
            pointers = self._not_behind(pointers)
        names = sorted(pointers)
        with ThreadPoolExecutor(max_workers=READERS) as readers:
            found = dict(zip(names, readers.map(lambda name: self._read(name, pointers[name]), names)))
        styles = self._hold_mass_removal({name: style for name, style in found.items() if style is not None})
        added = sorted(set(styles) - set(self.styles))
        changed = sorted(name for name in set(styles) & set(self.styles) if styles[name].version != self.styles[name].version)
        removed = sorted(set(self.styles) - set(styles))
        if added or changed or removed:
            logger.info("registry %s: %d style(s); new: %s; new versions: %s; withdrawn: %s", self.registry_uri, len(styles),
                        added or "none", changed or "none", removed or "none")
            self._keep_copy(styles)
        self.styles = styles
        self.refreshed_at = self.clock()

    def _hold_mass_removal(self, styles: dict[str, PublishedStyle]) -> dict[str, PublishedStyle]:
        """The new listing, except when it lacks more than half of the served styles (two at least) without
        their having been withdrawn (a withdrawal deletes current.json and leaves the versions): far more
        likely a storage fault or a wrong path, so the vanished styles stay (new and retrained ones go live)
        until storage has said the same for mass_removal_hold_s."""
        vanished = set(self.styles) - set(styles)
        if len(vanished) < 2 or len(vanished) * 2 <= len(self.styles):
            self.removal_held_since = None
            return styles
        unexplained = {name for name in vanished if not self._withdrawn(name)}
        if len(unexplained) < 2 or len(unexplained) * 2 <= len(self.styles):
            self.removal_held_since = None
            return {**styles, **{name: self.styles[name] for name in unexplained}}  # a few: checked again next time
        now = self.clock()
        if self.removal_held_since is None:
            self.removal_held_since = now
        if now - self.removal_held_since >= self.mass_removal_hold_s:
            logger.warning("registry %s: %d of %d styles gone, as it has said for %.0f s", self.registry_uri,
                           len(unexplained), len(self.styles), now - self.removal_held_since)
            self.removal_held_since = None
            return styles
        logger.warning("registry %s lists %d of the %d served styles; keeping %d that vanished at once without a withdrawal "
                       "(storage fault or wrong path?) for up to %.0f s more", self.registry_uri, len(styles), len(self.styles),
                       len(unexplained), self.mass_removal_hold_s - (now - self.removal_held_since))
        self.on_refresh("held")
        return {**styles, **{name: self.styles[name] for name in unexplained}}

    def _withdrawn(self, name: str) -> bool:
        """Withdrawn on purpose: its pointer is gone and its versions are still there (registry.withdraw)."""
        try:
            return (not storage.exists(storage.join(self.registry_uri, name, registry.POINTER_FILE))
                    and storage.has_content(storage.join(self.registry_uri, name, "versions")))
        except Exception:  # storage cannot say: not a withdrawal we can see
            return False

    def _keep_copy(self, styles: dict[str, PublishedStyle]) -> None:
        try:
            self.copy.save(json.dumps({name: [style.version, style.metadata, style.pointed_at] for name, style in styles.items()}).encode())
        except Exception as error:  # the copy is for a later replica: its failure must not stop this listing going live
            logger.warning("the listing of registry %s could not be kept for later replicas: %s", self.registry_uri, error)

    def _from_copy(self) -> dict[str, PublishedStyle]:
        try:
            data = self.copy.load()
            return {name: PublishedStyle(name, version, metadata, pointed_at=pointed_at)
                    for name, (version, metadata, pointed_at) in json.loads(data).items() if is_style_name(name)} if data else {}  # its names become URLs
        except Exception as error:  # a copy that cannot be read is no worse than none
            logger.warning("the last listing of registry %s could not be read: %s", self.registry_uri, error)
            return {}

    def _not_behind(self, pointers: dict[str, dict]) -> dict[str, dict]:
        """The index's pointers, never behind what is served already: a publisher that wrote the index
        from an older read can drop a style or an update from it. A served style the index lacks is
        checked at its current.json (gone only if withdrawn); an older pointer does not replace a newer
        one (by the time each was written, its published_at: ISO 8601 in UTC, microseconds included, sorts
        as text; a rollback writes a new pointer to an old version, so pointers are compared, not versions)."""
        pointers = dict(pointers)
        for name in set(self.styles) - set(pointers):
            try:
                pointers[name] = registry.read_pointer(self.registry_uri, name)
            except registry.ModelNotFound:
                pass  # withdrawn
        for name, served in self.styles.items():
            if name in pointers and pointers[name].get("published_at", "") < served.pointed_at:
                pointers[name] = {"version": served.version, "published_at": served.pointed_at}
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

    def _read(self, name: str, pointer: dict) -> PublishedStyle | None:
        """The style its pointer names, its metadata read once per version; the last one seen if unreadable."""
        known, version, pointed_at = self.styles.get(name), pointer["version"], pointer.get("published_at", "")
        if known is not None and known.version == version:
            return known if known.pointed_at >= pointed_at else dataclasses.replace(known, pointed_at=pointed_at)
        try:
            validate_style_name(name)  # index.json's names become URLs
            metadata = public_metadata(registry.read_metadata(self.registry_uri, name, version))
            return PublishedStyle(name, version, metadata, pointed_at=pointed_at or metadata.get("published_at", ""))
        except Exception as error:  # one broken style must not hide the others
            logger.warning("style %r: %s; serving what was last seen of it", name, error)
            return known

    def start_refreshing(self) -> None:
        self._thread = threading.Thread(target=self._refresh_forever, name="registry-refresh", daemon=True)
        self._thread.start()

    def _refresh_forever(self) -> None:
        self._first_read.join()  # a first read still hanging: one refresh at a time
        while True:
            time.sleep(self.refresh_s)
            self.attempt_started = self.clock()
            try:
                self.refresh()
                self.on_refresh("ok")
            except Exception as error:  # the storage was unreachable: keep serving what was last seen
                self.on_refresh("failed")
                logger.warning("registry %s not refreshed (last read %.0f s ago): %s", self.registry_uri, self.age_s(), error)
            finally:
                self.attempt_started = None

    def picture(self, name: str, filename: str) -> bytes | None:
        style = self.styles.get(name)
        if style is None or filename not in PICTURES:
            return None
        if filename not in style.pictures:
            style.pictures[filename] = registry.read_file(self.registry_uri, name, filename, style.version)
        return style.pictures[filename]

