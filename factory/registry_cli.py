"""See and steer a registry without Python: what is published, which version each style serves, and the
operator's three moves (roll a style back, withdraw it, prune old versions). On a folder or s3:// alike.

    python -m factory.registry [--registry R] list
    python -m factory.registry show STYLE
    python -m factory.registry rollback STYLE [VERSION]     # default: the version before the current one
    python -m factory.registry withdraw STYLE
    python -m factory.registry prune --keep N [--dry-run]

A rollback is the same atomic pointer switch as a publish (current.json, then index.json), so a serving
pool answers with the old version within its pool.refresh_s, without a deploy. Prune deletes versions
beyond each style's newest N, never a current one, and never a family version that a kept version of any
style points at.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import datetime, timezone

from factory import registry, storage

DEFAULT_REGISTRY = "data/registry"


def list_styles(root: str) -> list[str]:
    """One line a style: name, current version (or withdrawn), when it became current, versions kept, family."""
    pointers = registry.scan_pointers(root)
    lines = []
    for name in registry.style_folders(root):
        versions = registry.list_versions(root, name)
        pointer = pointers.get(name)
        if pointer is None:
            lines.append(f"{name}  withdrawn  ({len(versions)} version(s) kept)")
            continue
        family = registry.read_metadata(root, name, pointer["version"]).get("family")
        lines.append(f"{name}  {pointer['version']}  current since {pointer.get('published_at', '?')}  "
                     f"{len(versions)} version(s)" + (f"  family {family['name']}:{family['version']}" if family else ""))
    return lines or [f"no styles in {root}"]


def show_style(root: str, style: str) -> list[str]:
    """Every version of a style, newest first, with its figures; the current one starred."""
    versions = versions_oldest_first(root, style)
    if not versions:
        raise registry.ModelNotFound(f"no style {style!r} in registry {root!r}: `python -m factory.registry list` shows them")
    current = _current_or_none(root, style)
    lines = [f"{style}: {'withdrawn' if current is None else 'current ' + current}"]
    for version in reversed(versions):
        try:
            metadata = registry.read_metadata(root, style, version)
        except FileNotFoundError:
            lines.append(f"  {version}  (incomplete: no metadata.json; a publish in progress or one that failed)")
            continue
        quality = metadata.get("quality", {})
        figures = [f"steps {metadata.get('steps', '?')}"]
        if "colour_shift" in quality:
            figures.append(f"colour {quality['colour_shift']:.2f} structure {quality.get('structure_kept', float('nan')):.2f}")
        if "family" in metadata:
            figures.append(f"family {metadata['family']['name']}:{metadata['family']['version']}")
        lines.append(f"{'*' if version == current else ' '} {version}  published {metadata.get('published_at', '?')}  " + "  ".join(figures))
    return lines


def rollback(root: str, style: str, version: str | None) -> str:
    """Make `version` current (default: the one published before the current one). A withdrawn style
    is published again by naming one of its versions."""
    versions = versions_oldest_first(root, style)
    current = _current_or_none(root, style)
    if not versions:
        raise ValueError(f"no published style {style!r} in registry {root!r}: `python -m factory.registry list` shows them")
    if version is None:
        if current is None:
            raise ValueError(f"{style!r} is withdrawn: name the VERSION to publish again (`show {style}` lists them)")
        older = [candidate for candidate in versions[:versions.index(current)] if _complete(root, style, candidate)]
        if not older:
            raise ValueError(f"{style!r} has no version before its current {current}: nothing to roll back to")
        version = older[-1]
    elif version == current:
        raise ValueError(f"{style!r} version {version} is already current")
    elif version not in versions:
        raise ValueError(f"{style!r} has no version {version!r}; it has: {', '.join(reversed(versions))}")
    registry.make_current(root, style, version)
    return (f"{style}: {current or 'withdrawn'} -> {version} (servers switch within their pool.refresh_s"
            + (f"; {current} stays, to roll forward)" if current else ")"))


def withdraw(root: str, style: str) -> str:
    current = _current_or_none(root, style)
    if current is None:
        raise ValueError(f"{style!r} is not published in registry {root!r}: nothing to withdraw")
    registry.withdraw(root, style)
    return (f"{style}: withdrawn (was {current}); servers drop it within their pool.refresh_s. Its versions stay: "
            f"`rollback {style} {current}` publishes it again, `prune` deletes old ones")


@dataclass(frozen=True)
class Deletion:
    uri: str
    why: str


def plan_prune(root: str, keep: int) -> list[Deletion]:
    """What prune deletes: each style's versions beyond its newest `keep` (never its current one), then each
    family's versions beyond its newest `keep`, never its current one nor one a kept style version points at."""
    if keep < 1:
        raise ValueError(f"--keep must be at least 1 (got {keep}): it counts the newest versions kept, the current one among them")
    deletions, family_versions_in_use = [], set()
    for style in registry.style_folders(root):
        versions = versions_oldest_first(root, style)
        current = _current_or_none(root, style)
        kept = set(versions[-keep:]) | ({current} if current else set())
        for version in versions:
            if version in kept:
                family = _family_of(root, style, version)
                if family:
                    family_versions_in_use.add(family)
            else:
                deletions.append(Deletion(registry.version_uri(root, style, version), f"{style}: older than its newest {keep}"))
    for family in registry.list_families(root):
        versions = family_versions_oldest_first(root, family)
        current = _family_current_or_none(root, family)
        for version in versions[:-keep]:
            if version == current or (family, version) in family_versions_in_use:
                continue
            deletions.append(Deletion(registry.family_uri(root, family, version), f"family {family}: older than its newest {keep}, no kept style on it"))
    return deletions


def prune(root: str, keep: int, dry_run: bool) -> list[str]:
    deletions = plan_prune(root, keep)
    if not deletions:
        return [f"nothing to prune: every style and family has at most {keep} version(s) beyond what is in use"]
    lines = []
    for deletion in deletions:
        if dry_run:
            lines.append(f"would delete {deletion.uri}  ({deletion.why})")
        else:
            lines.append(f"deleted {deletion.uri}  ({storage.delete_tree(deletion.uri)} files; {deletion.why})")
    return lines


def versions_oldest_first(root: str, style: str) -> list[str]:
    """The style's versions in publishing order. A version's name starts with its second only (two published
    within one second sort by their random suffix), so the order is its metadata's published_at, which
    has microseconds; a version without metadata (being written, or a publish that failed) by its name."""
    return sorted(registry.list_versions(root, style), key=lambda version: _published_at(
        lambda: registry.read_metadata(root, style, version), version))


def family_versions_oldest_first(root: str, family: str) -> list[str]:
    return sorted(registry.list_family_versions(root, family), key=lambda version: _published_at(
        lambda: registry.read_family_metadata(root, family, version), version))


def _published_at(read_metadata, version: str) -> datetime:
    try:
        return datetime.fromisoformat(read_metadata()["published_at"])
    except (FileNotFoundError, LookupError, KeyError, ValueError):
        return datetime.strptime(version.split("-", 1)[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)


def _current_or_none(root: str, style: str) -> str | None:
    try:
        return registry.current_version(root, style)
    except registry.ModelNotFound:
        return None


def _family_current_or_none(root: str, family: str) -> str | None:
    try:
        return registry.read_family_metadata(root, family)["family"]["version"]
    except registry.ModelNotFound:
        return None


def _complete(root: str, style: str, version: str) -> bool:
    return storage.exists(registry.version_uri(root, style, version, registry.METADATA_FILE))


def _family_of(root: str, style: str, version: str) -> tuple[str, str] | None:
    try:
        family = registry.read_metadata(root, style, version).get("family")
    except FileNotFoundError:
        return None
    return (family["name"], family["version"]) if family else None


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", default=argparse.SUPPRESS, help=f"a folder or s3://bucket/prefix (default: {DEFAULT_REGISTRY})")
    parser = argparse.ArgumentParser(prog="python -m factory.registry", description=__doc__, parents=[common],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", parents=[common], help="every style, its current version and how many are kept")
    show = commands.add_parser("show", parents=[common], help="a style's versions, newest first, with their figures")
    show.add_argument("style")
    back = commands.add_parser("rollback", parents=[common], help="make an older version current (default: the one before)")
    back.add_argument("style")
    back.add_argument("version", nargs="?")
    gone = commands.add_parser("withdraw", parents=[common], help="stop publishing a style (its versions stay)")
    gone.add_argument("style")
    old = commands.add_parser("prune", parents=[common], help="delete versions beyond each style's newest N")
    old.add_argument("--keep", type=int, required=True, help="versions kept per style and per family, the current one among them")
    old.add_argument("--dry-run", action="store_true", help="print what would be deleted; delete nothing")
    args = parser.parse_args(argv)
    root = storage.absolute(getattr(args, "registry", DEFAULT_REGISTRY))
    try:
        if not storage.is_s3(root) and not storage.has_content(root):
            raise ValueError(f"no registry at {root}: pass --registry with a folder or s3://bucket/prefix that training publishes to")
        if args.command == "list":
            lines = list_styles(root)
        elif args.command == "show":
            lines = show_style(root, args.style)
        elif args.command == "rollback":
            lines = [rollback(root, args.style, args.version)]
        elif args.command == "withdraw":
            lines = [withdraw(root, args.style)]
        else:
            lines = prune(root, args.keep, args.dry_run)
    except (ValueError, LookupError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0
