"""Download COCO train2014 and the VGG-19 weights into data/ or to an S3 prefix.

    python -m factory.download coco vgg19-mat            # into data/ (data/train2014/, data/*.mat)
    python -m factory.download vgg19-pth --dest s3://my-bucket/style-factory

Resumable: bytes go to <file>.part and a rerun continues it with an HTTP Range request. Checked:
the size the server announced, the sha256 where one is published, and the MD5 against each published
release (COCO's zip, both MatConvNet releases of the .mat), naming the release found. Never leaves a partial file
where a complete one is expected: the .part file is renamed only once it checks out. --mirror
fetches the same file names from another base URL (an internal mirror; STYLE_FACTORY_MIRROR sets it for
every run). Files land where factory/layout.py says: <dest>/train2014/, <dest>/imagenet-vgg-verydeep-19.mat,
<dest>/vgg19.pth, the paths configs/coco.yaml (dest data) and configs/coco_s3.yaml (dest s3://<bucket>) read.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

if __package__ in (None, ""):
    # the repository, not this script's folder: its onnx_model.py would shadow ONNX Runtime's own
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from factory import layout, storage

CHUNK = 1 << 20
# A base URL to fetch every file from instead of its publisher (an internal mirror).
MIRROR_ENV = "STYLE_FACTORY_MIRROR"
# Tests only: a JSON file {file name: {md5: release}} whose MD5s are accepted besides the published
# ones, so a rehearsal can serve small stand-ins. A user cannot trip it by accident: it must be set by
# this name, it names the file and digest it accepts, and every use is announced on stderr.
TEST_RELEASES_ENV = "STYLE_FACTORY_TEST_ONLY_RELEASES"


@dataclass(frozen=True)
class Item:
    url: str
    filename: str
    # Full sha256, or the prefix torchvision publishes in its file names; None where none is published.
    sha256: str | None
    # Unzip into this folder (under the destination) instead of keeping the archive.
    unpack_to: str | None = None
    # Published MD5s of known releases, {md5: which release}: a file matching none is not given its name.
    md5_releases: dict = field(default_factory=dict)


ITEMS = {
    "coco": Item("https://images.cocodataset.org/zips/train2014.zip", "train2014.zip", None, unpack_to=layout.COCO_IMAGES,
                 md5_releases={"0da8c0bd3d6becc4dcb32757491aca88": "COCO train2014 (2014 release)"}),
    "vgg19-mat": Item("https://www.vlfeat.org/matconvnet/models/imagenet-vgg-verydeep-19.mat", layout.VGG19_MAT, None,
                      md5_releases={
                          "106118b7cf60435e6d8e04f6a6dc3657": "the current MatConvNet release (layers + meta)",
                          "8ee3263992981a1d26e73b3ca028a123": "the older MatConvNet release (top-level normalization)",
                      }),
    "vgg19-pth": Item("https://download.pytorch.org/models/vgg19-dcbb9e9d.pth", layout.VGG19_PTH, "dcbb9e9d"),
}


class DownloadError(RuntimeError):
    pass


class Progress:
    """A one-line progress bar on stderr: bytes, percent and speed, redrawn twice a second."""

    def __init__(self, name: str, total: int | None, done: int):
        self.name, self.total, self.done, self.start_done = name, total, done, done
        self.started = self.last = time.monotonic()

    def update(self, count: int, final: bool = False) -> None:
        self.done += count
        now = time.monotonic()
        if not final and now - self.last < 0.5:
            return
        self.last = now
        speed = (self.done - self.start_done) / max(now - self.started, 1e-9) / 1e6
        share = f"{100 * self.done / self.total:5.1f}%" if self.total else "     "
        total = f"/{self.total / 1e6:.0f}" if self.total else ""
        print(f"\r{self.name}: {share} {self.done / 1e6:.0f}{total} MB at {speed:.1f} MB/s", end="\n" if final else "", file=sys.stderr, flush=True)


def fetch(url: str, target: Path, expected_sha256: str | None, md5_releases: dict | None = None) -> Path:
    """Download url to target, resuming target.part; returns target once complete and checked."""
    if target.exists():
        return _checked_existing(url, target, expected_sha256, md5_releases)
    partial = target.with_name(target.name + ".part")
    # The ETag (or Last-Modified) of the response that began the .part: a resume asks for the rest
    # only if the server's file is still that one (If-Range), so a changed file is never spliced on.
    validator_file = partial.with_name(partial.name + ".validator")
    target.parent.mkdir(parents=True, exist_ok=True)
    have = partial.stat().st_size if partial.exists() else 0
    headers = {}
    if have:
        headers["Range"] = f"bytes={have}-"
        if validator_file.exists():
            headers["If-Range"] = validator_file.read_text()
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing past `have`: whole only if the server's size says so
            _check_whole(url, partial, have, error.headers.get("Content-Range", ""))
            response = None
        else:
            raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise DownloadError(f"{url}: {error.reason}; check the network, or use --mirror") from None
    total = None
    if response is not None:
        with response:
            resumed = response.status == 206
            if resumed:
                _check_resumes_at(url, partial, have, response.headers.get("Content-Range", ""))
            else:
                have = 0  # the server ignored the Range, or its file changed: start over
                validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
                validator_file.unlink(missing_ok=True)
                if validator:
                    validator_file.write_text(validator)
            length = response.headers.get("Content-Length")
            total = have + int(length) if length else None
            progress = Progress(target.name, total, have)
            with open(partial, "ab" if resumed else "wb") as handle:
                try:
                    while chunk := response.read(CHUNK):
                        handle.write(chunk)
                        progress.update(len(chunk))
                except (OSError, TimeoutError, http.client.IncompleteRead) as error:
                    raise DownloadError(f"{url}: interrupted after {progress.done} bytes ({error}); run the same command again to resume") from None
            progress.update(0, final=True)
    size = partial.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"{url}: got {size} of {total} bytes; run the same command again to resume")
    validator_file.unlink(missing_ok=True)  # from here the .part is either accepted or set aside
    _check_digests(url, partial, target, expected_sha256, md5_releases)
    os.replace(partial, target)
    return target


def _checked_existing(url: str, target: Path, expected_sha256: str | None, md5_releases: dict | None) -> Path:
    """A file already at target: trusted if it was checked after it was last written (its .sha256
    record is at least as new); else (put there by hand, or changed since) checked now, like a download."""
    record = target.with_name(target.name + ".sha256")
    if record.exists() and record.stat().st_mtime_ns >= target.stat().st_mtime_ns:
        return target
    _check_digests(url, target, target, expected_sha256, md5_releases)
    return target


def _check_digests(url: str, path: Path, target: Path, expected_sha256: str | None, md5_releases: dict | None) -> None:
    """Check path against the published digests; a mismatch is removed (sha256) or set aside (MD5,
    as target.unverified, never under the name training reads). Records the sha256 when it passes."""
    digest, md5 = digests_of(path)
    if expected_sha256 and not digest.startswith(expected_sha256):
        path.unlink()
        raise DownloadError(f"{url}: sha256 {digest} does not match the published {expected_sha256}; the file was removed, download it again")
    if md5_releases:
        if md5 not in md5_releases:
            unverified = target.with_name(target.name + ".unverified")
            os.replace(path, unverified)  # kept (it may be large), but never under the name training reads
            raise DownloadError(
                f"{url}: MD5 {md5} matches no published release ({', '.join(f'{value}: {key}' for key, value in md5_releases.items())}); "
                f"kept as {unverified}. A mirror may serve another file: check it, or delete it and download again"
            )
        print(f"{target.name}: MD5 {md5} is {md5_releases[md5]}", file=sys.stderr)
    target.with_name(target.name + ".sha256").write_text(f"{digest}  {target.name}\n")


def _discard(partial: Path) -> None:
    partial.unlink(missing_ok=True)
    partial.with_name(partial.name + ".validator").unlink(missing_ok=True)


def _content_range_total(content_range: str) -> int | None:
    """TOTAL from 'bytes START-END/TOTAL' or 'bytes */TOTAL'; None when absent or '*'."""
    total = content_range.rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None


def _check_whole(url: str, partial: Path, have: int, content_range: str) -> None:
    total = _content_range_total(content_range)
    if total != have:
        _discard(partial)
        raise DownloadError(f"{url}: the server has {total if total is not None else 'an unknown number of'} bytes, the "
                            f"partial download {have}: it was removed; run the same command again to start over")


def _check_resumes_at(url: str, partial: Path, have: int, content_range: str) -> None:
    start = content_range.removeprefix("bytes ").partition("-")[0].strip()
    if start != str(have):
        _discard(partial)
        raise DownloadError(f"{url}: asked to resume at byte {have}, the server answered {content_range or 'no Content-Range'}; "
                            "the partial download was removed: run the same command again to start over")


def digests_of(path: Path) -> tuple[str, str]:
    """(sha256, md5) of a file, in one read: sha256 for our records, MD5 because that is what
    MatConvNet and COCO publish."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            sha256.update(chunk)
            md5.update(chunk)
    return sha256.hexdigest(), md5.hexdigest()


def safe_member_name(name: str) -> str | None:
    """The archive member's path if it is a plain relative file path (no zip-slip), else None."""
    path = PurePosixPath(name)
    if name.endswith("/") or path.is_absolute() or ".." in path.parts or not path.parts:
        return None
    return str(path)


# Members are streamed to their destination; this bounds the disk or S3 space one can take, whatever
# an archive claims (a zip bomb member, or a mirror's wrong file).
MAX_MEMBER_BYTES = 64 * 1024 * 1024


def unpack(archive: Path, dest: str, folder: str) -> int:
    """Extract the archive's files into dest/<folder>/ (local or S3); skips what is already there."""
    count = 0
    with zipfile.ZipFile(archive) as zipped:
        for member in zipped.infolist():
            name = safe_member_name(member.filename)
            if name is None:
                continue
            parts = PurePosixPath(name).parts
            relative = "/".join(parts[1:] if parts[0] == folder else parts)  # train2014/x.jpg -> x.jpg
            target = storage.join(dest, folder, relative)
            if storage.exists(target):
                continue
            if member.file_size > MAX_MEMBER_BYTES:  # COCO's largest image is under 1 MB
                print(f"skipped {member.filename}: {member.file_size} bytes unpacked, over {MAX_MEMBER_BYTES}", file=sys.stderr)
                continue
            with zipped.open(member) as source:
                storage.write_stream(target, source)  # in chunks, atomic per file
            count += 1
    return count


def test_only_releases(filename: str) -> dict:
    """{md5: release} accepted for `filename` by STYLE_FACTORY_TEST_ONLY_RELEASES, announced; {} when unset."""
    path = os.environ.get(TEST_RELEASES_ENV)
    if not path:
        return {}
    releases = json.loads(Path(path).read_text()).get(filename, {})
    if releases:
        print(f"WARNING: {TEST_RELEASES_ENV}={path} accepts {filename} with MD5 {', '.join(releases)}: for tests only, "
              "never for real data", file=sys.stderr)
    return {md5: f"{release} (test only)" for md5, release in releases.items()}


def download(name: str, dest: str, cache: Path, mirror: str | None = None) -> str:
    item = ITEMS[name]
    extra = test_only_releases(item.filename)
    if extra:
        item = dataclasses.replace(item, md5_releases={**item.md5_releases, **extra})
    url = f"{mirror.rstrip('/')}/{item.filename}" if mirror else item.url
    local_dest = not storage.is_s3(dest)
    # Archives and S3-bound files are fetched to a local cache first: resuming needs a local .part.
    target = Path(dest, item.filename) if local_dest and not item.unpack_to else cache / item.filename
    if not local_dest and not item.unpack_to and storage.exists(storage.join(dest, item.filename)):
        return storage.join(dest, item.filename)
    path = fetch(url, target, item.sha256, item.md5_releases)
    if item.unpack_to:
        try:
            written = unpack(path, dest, item.unpack_to)
        except zipfile.BadZipFile as error:  # else every rerun would find the file and fail again
            corrupt = path.with_name(path.name + ".corrupt")
            os.replace(path, corrupt)
            raise DownloadError(f"{path} is not a readable zip ({error}); moved to {corrupt}: run the same command again to download it afresh") from None
        print(f"{name}: {written} new files in {storage.join(dest, item.unpack_to)}", file=sys.stderr)
        return storage.join(dest, item.unpack_to)
    if not local_dest:
        with open(path, "rb") as source:  # 510 MB for the .mat: streamed, in parts
            storage.write_stream(storage.join(dest, item.filename), source)
        return storage.join(dest, item.filename)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="+", choices=sorted(ITEMS), help="what to download")
    parser.add_argument("--dest", default="data", help="folder or s3://bucket/prefix (default: data)")
    parser.add_argument("--cache", type=Path, default=Path("data/.downloads"), help="where archives and S3-bound files are staged")
    parser.add_argument("--mirror", default=os.environ.get(MIRROR_ENV) or None,
                        help=f"base URL to fetch the same file names from instead (default: ${MIRROR_ENV})")
    args = parser.parse_args(argv)
    for name in args.items:
        try:
            print(f"{name}: ready at {download(name, args.dest, args.cache, args.mirror)}")
        except DownloadError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
