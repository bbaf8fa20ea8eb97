"""The download command against a real HTTP server on 127.0.0.1 that serves byte ranges and can
drop a connection half-way, as real downloads do."""

import dataclasses
import hashlib
import http.server
import io
import threading
import zipfile

import boto3
import pytest

from factory import download


class Server:
    """Serves `files` with an ETag per file, HTTP ranges and If-Range, as CDNs do; the first request
    for a name in `cut_once` is cut after half its bytes. Misbehaving servers too: `ranges=False`
    answers every request with the whole file (200), `range_off_by` answers a 206 for another range than asked (truthfully labelled),
    `length=False` sends no Content-Length."""

    def __init__(self, files: dict[str, bytes], cut_once=(), ranges=True, range_off_by=0, length=True):
        self.files, self.cut_once, self.requests = files, set(cut_once), []
        self.ranges, self.range_off_by, self.length = ranges, range_off_by, length
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                data = server.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                etag = f'"{hashlib.md5(data).hexdigest()}"'
                start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") and server.ranges else 0
                if start and self.headers.get("If-Range") not in (None, etag):
                    start = 0  # the file changed since: the whole new file, as RFC 9110 says
                if start >= len(data) and start:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                self.send_header("ETag", etag)
                if start:  # range_off_by: another range than asked for, in the bytes and the header alike
                    start += server.range_off_by
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                if server.length:
                    self.send_header("Content-Length", str(len(data) - start))
                else:
                    self.close_connection = True  # the body ends when the connection does
                self.end_headers()
                body = data[start:]
                if name in server.cut_once:
                    server.cut_once.discard(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the connection drops mid-file
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def weights_bytes():
    return bytes(range(256)) * 4000  # ~1 MB, a stand-in for the weights file


def test_an_interrupted_download_leaves_no_file_and_the_rerun_resumes(tmp_path, weights_bytes, monkeypatch, capsys):
    digest = hashlib.sha256(weights_bytes).hexdigest()
    monkeypatch.setitem(download.ITEMS, "vgg19-pth", download.Item("unused", "vgg19.pth", digest[:8]))
    server = Server({"vgg19.pth": weights_bytes}, cut_once={"vgg19.pth"})
    try:
        arguments = ["vgg19-pth", "--dest", str(tmp_path / "data"), "--mirror", server.url]
        assert download.main(arguments) == 1
        assert "run the same command again to resume" in capsys.readouterr().err
        assert not (tmp_path / "data" / "vgg19.pth").exists()  # never a partial file under the real name
        partial = (tmp_path / "data" / "vgg19.pth.part").stat().st_size
        assert 0 < partial < len(weights_bytes)

        assert download.main(arguments) == 0
        assert (tmp_path / "data" / "vgg19.pth").read_bytes() == weights_bytes
        assert server.requests[-1] == ("vgg19.pth", f"bytes={partial}-")  # resumed, not restarted
        assert (tmp_path / "data" / "vgg19.pth.sha256").read_text().startswith(digest)
        assert "100.0%" in capsys.readouterr().err  # the progress bar
    finally:
        server.close()


def test_a_file_changed_between_attempts_is_downloaded_afresh_not_spliced(tmp_path, weights_bytes, monkeypatch):
    monkeypatch.setitem(download.ITEMS, "vgg19-pth", download.Item("unused", "vgg19.pth", None))
    server = Server({"vgg19.pth": weights_bytes}, cut_once={"vgg19.pth"})
    try:
        arguments = ["vgg19-pth", "--dest", str(tmp_path), "--mirror", server.url]
        assert download.main(arguments) == 1  # cut half way
        changed = bytes(reversed(weights_bytes))
        server.files["vgg19.pth"] = changed  # a new release under the same name
        assert download.main(arguments) == 0
        assert (tmp_path / "vgg19.pth").read_bytes() == changed
    finally:
        server.close()


@pytest.mark.parametrize("misbehaving, first_exit", [({"ranges": False}, 0), ({"range_off_by": 100}, 1), ({"length": False}, 0)],
                         ids=["200-on-resume", "another-range", "no-content-length"])
def test_a_resume_against_a_misbehaving_server_never_splices(tmp_path, weights_bytes, monkeypatch, capsys, misbehaving, first_exit):
    """No published checksum here (as for a mirror's file without one): only the range checks stand
    between a resume and a spliced file."""
    monkeypatch.setitem(download.ITEMS, "vgg19-pth", download.Item("unused", "vgg19.pth", None))
    (tmp_path / "vgg19.pth.part").write_bytes(weights_bytes[:1000])  # an earlier, interrupted attempt
    server = Server({"vgg19.pth": weights_bytes}, **misbehaving)
    try:
        arguments = ["vgg19-pth", "--dest", str(tmp_path), "--mirror", server.url]
        assert download.main(arguments) == first_exit
        if first_exit:  # bytes 1100- offered for a resume at 1000: refused, the partial file removed
            assert "asked to resume at byte 1000" in capsys.readouterr().err and not (tmp_path / "vgg19.pth.part").exists()
            assert download.main(arguments) == 0  # and the rerun starts over
    finally:
        server.close()
    assert (tmp_path / "vgg19.pth").read_bytes() == weights_bytes


def test_a_partial_file_longer_than_the_servers_is_not_taken_as_whole(tmp_path, weights_bytes, monkeypatch, capsys):
    monkeypatch.setitem(download.ITEMS, "vgg19-pth", download.Item("unused", "vgg19.pth", None))
    (tmp_path / "vgg19.pth.part").write_bytes(weights_bytes + b"trailing junk")  # a 416 answer follows
    server = Server({"vgg19.pth": weights_bytes})
    try:
        arguments = ["vgg19-pth", "--dest", str(tmp_path), "--mirror", server.url]
        assert download.main(arguments) == 1
        assert "removed" in capsys.readouterr().err and not (tmp_path / "vgg19.pth").exists()
        assert download.main(arguments) == 0
        assert (tmp_path / "vgg19.pth").read_bytes() == weights_bytes
    finally:
        server.close()


def test_a_corrupt_archive_is_moved_aside_so_a_rerun_fetches_it_again(tmp_path, monkeypatch, capsys):
    with_published_md5(monkeypatch, "coco", b"not a zip")
    server = Server({"train2014.zip": b"not a zip"})
    try:
        arguments = ["coco", "--dest", str(tmp_path / "data"), "--cache", str(tmp_path / "cache"), "--mirror", server.url]
        assert download.main(arguments) == 1
    finally:
        server.close()
    assert "not a readable zip" in capsys.readouterr().err
    assert (tmp_path / "cache" / "train2014.zip.corrupt").exists() and not (tmp_path / "cache" / "train2014.zip").exists()


def test_a_checksum_mismatch_keeps_nothing(tmp_path, weights_bytes, monkeypatch, capsys):
    monkeypatch.setitem(download.ITEMS, "vgg19-pth", download.Item("unused", "vgg19.pth", "deadbeef"))
    server = Server({"vgg19.pth": weights_bytes})
    try:
        assert download.main(["vgg19-pth", "--dest", str(tmp_path), "--mirror", server.url]) == 1
        assert "does not match" in capsys.readouterr().err
        assert list(tmp_path.iterdir()) == []
    finally:
        server.close()


def coco_zip() -> bytes:
    """The same bytes on every call (fixed timestamps), so its MD5 can be published to the test."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in (("train2014/COCO_train2014_000000000009.jpg", b"jpeg-1"),
                           ("train2014/COCO_train2014_000000000025.jpg", b"jpeg-2"),
                           ("../escape.jpg", b"zip slip")):  # never written outside the destination
            archive.writestr(zipfile.ZipInfo(name, date_time=(2014, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def with_published_md5(monkeypatch, name: str, data: bytes, release: str = "the test release") -> None:
    """Our stand-in files are not COCO's or MatConvNet's: publish their MD5 for the test."""
    item = download.ITEMS[name]
    monkeypatch.setitem(download.ITEMS, name, dataclasses.replace(item, md5_releases={hashlib.md5(data).hexdigest(): release}))


def test_a_file_matching_no_published_release_is_not_given_its_name(tmp_path, weights_bytes, capsys):
    server = Server({"imagenet-vgg-verydeep-19.mat": weights_bytes})  # the real MD5s, a file that is not the .mat
    try:
        assert download.main(["vgg19-mat", "--dest", str(tmp_path), "--mirror", server.url]) == 1
    finally:
        server.close()
    assert "matches no published release" in capsys.readouterr().err
    assert not (tmp_path / "imagenet-vgg-verydeep-19.mat").exists()
    assert (tmp_path / "imagenet-vgg-verydeep-19.mat.unverified").read_bytes() == weights_bytes  # nothing lost


def test_the_release_found_is_named(tmp_path, weights_bytes, monkeypatch, capsys):
    with_published_md5(monkeypatch, "vgg19-mat", weights_bytes, "the current MatConvNet release")
    server = Server({"imagenet-vgg-verydeep-19.mat": weights_bytes})
    try:
        assert download.main(["vgg19-mat", "--dest", str(tmp_path), "--mirror", server.url]) == 0
    finally:
        server.close()
    assert "is the current MatConvNet release" in capsys.readouterr().err
    assert (tmp_path / "imagenet-vgg-verydeep-19.mat").read_bytes() == weights_bytes


def test_a_file_changed_after_its_check_is_checked_again_and_set_aside(tmp_path, weights_bytes, monkeypatch, capsys):
    with_published_md5(monkeypatch, "vgg19-mat", weights_bytes, "the current MatConvNet release")
    server = Server({"imagenet-vgg-verydeep-19.mat": weights_bytes})
    target = tmp_path / "imagenet-vgg-verydeep-19.mat"
    try:
        assert download.main(["vgg19-mat", "--dest", str(tmp_path), "--mirror", server.url]) == 0
        requests_after_first = len(server.requests)
        assert download.main(["vgg19-mat", "--dest", str(tmp_path), "--mirror", server.url]) == 0  # checked: reused
        assert len(server.requests) == requests_after_first
        with open(target, "r+b") as handle:  # a disk error, an interrupted copy: the file is cut short
            handle.truncate(len(weights_bytes) // 3)
        capsys.readouterr()
        assert download.main(["vgg19-mat", "--dest", str(tmp_path), "--mirror", server.url]) == 1
        assert "matches no published release" in capsys.readouterr().err and not target.exists()
        assert download.main(["vgg19-mat", "--dest", str(tmp_path), "--mirror", server.url]) == 0  # fetched afresh
    finally:
        server.close()
    assert target.read_bytes() == weights_bytes


def download_test_coco(tmp_path, monkeypatch) -> int:
    with_published_md5(monkeypatch, "coco", coco_zip())
    server = Server({"train2014.zip": coco_zip()})
    try:
        return download.main(["coco", "--dest", str(tmp_path / "data"), "--cache", str(tmp_path / "cache"), "--mirror", server.url])
    finally:
        server.close()


def test_an_archive_member_larger_than_the_bound_is_skipped_not_read(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(download, "MAX_MEMBER_BYTES", 5)  # the test archive's images are 6 bytes each
    assert download_test_coco(tmp_path, monkeypatch) == 0
    assert "over 5" in capsys.readouterr().err
    assert not (tmp_path / "data" / "train2014").exists() or not list((tmp_path / "data" / "train2014").iterdir())


def test_coco_is_unpacked_into_train2014_and_zip_slip_is_ignored(tmp_path, monkeypatch):
    assert download_test_coco(tmp_path, monkeypatch) == 0
    assert sorted(p.name for p in (tmp_path / "data" / "train2014").iterdir()) == [
        "COCO_train2014_000000000009.jpg", "COCO_train2014_000000000025.jpg"]
    assert not (tmp_path / "escape.jpg").exists() and not (tmp_path / "data" / "escape.jpg").exists()


def test_download_to_an_s3_prefix(s3_server, tmp_path, weights_bytes, monkeypatch):
    monkeypatch.setitem(download.ITEMS, "vgg19-pth", download.Item("unused", "vgg19.pth", None))
    with_published_md5(monkeypatch, "coco", coco_zip())
    client = boto3.client("s3")
    client.create_bucket(Bucket="downloads")
    server = Server({"vgg19.pth": weights_bytes, "train2014.zip": coco_zip()})
    try:
        arguments = ["vgg19-pth", "coco", "--dest", "s3://downloads/factory", "--cache", str(tmp_path), "--mirror", server.url]
        assert download.main(arguments) == 0
    finally:
        server.close()
    assert client.get_object(Bucket="downloads", Key="factory/vgg19.pth")["Body"].read() == weights_bytes
    keys = [item["Key"] for item in client.list_objects_v2(Bucket="downloads", Prefix="factory/train2014/")["Contents"]]
    assert len(keys) == 2


def test_a_file_one_byte_off_its_release_is_not_given_its_name(tmp_path, weights_bytes, monkeypatch, capsys):
    with_published_md5(monkeypatch, "vgg19-mat", weights_bytes, "the current MatConvNet release")
    damaged = weights_bytes[:5000] + bytes([weights_bytes[5000] ^ 1]) + weights_bytes[5001:]
    server = Server({"imagenet-vgg-verydeep-19.mat": damaged})
    try:
        assert download.main(["vgg19-mat", "--dest", str(tmp_path), "--mirror", server.url]) == 1
    finally:
        server.close()
    assert "matches no published release" in capsys.readouterr().err and not (tmp_path / "imagenet-vgg-verydeep-19.mat").exists()


def test_test_only_releases_must_be_named_explicitly_and_are_announced(tmp_path, weights_bytes, monkeypatch, capsys):
    """What lets the README rehearsal download stand-ins: refused without the setting, announced with it."""
    import json

    server = Server({"imagenet-vgg-verydeep-19.mat": weights_bytes})
    try:
        arguments = ["vgg19-mat", "--dest", str(tmp_path), "--mirror", server.url]
        assert download.main(arguments) == 1  # the stand-in is no MatConvNet release
        releases = tmp_path / "releases.json"
        releases.write_text(json.dumps({"imagenet-vgg-verydeep-19.mat": {hashlib.md5(weights_bytes).hexdigest(): "a stand-in"}}))
        monkeypatch.setenv(download.TEST_RELEASES_ENV, str(releases))
        (tmp_path / "imagenet-vgg-verydeep-19.mat.unverified").unlink()
        assert download.main(arguments) == 0
    finally:
        server.close()
    assert "for tests only" in capsys.readouterr().err
    assert (tmp_path / "imagenet-vgg-verydeep-19.mat").read_bytes() == weights_bytes
