import json

import pytest
import torch

from factory import registry, storage
from factory.transform_net import TransformNet


def publish(root, name="starry_night", seed=0):
    torch.manual_seed(seed)
    net = TransformNet()
    version = registry.publish(str(root), name, net.state_dict(), {"steps": 5}, b"thumb", b"preview")
    return net, version


def test_published_model_loads_back_identical(tmp_path):
    net, version = publish(tmp_path)
    loaded, metadata = registry.load_model(str(tmp_path), "starry_night")
    assert metadata["version"] == version and metadata["style"] == "starry_night" and metadata["steps"] == 5
    images = torch.rand(1, 3, 16, 16) * 255
    with torch.no_grad():
        assert torch.equal(loaded(images), net.eval()(images))
    assert registry.read_file(str(tmp_path), "starry_night", registry.PREVIEW_FILE) == b"preview"


def test_a_version_without_current_pointer_is_invisible(tmp_path):
    # What a reader sees while a publish is under way: files of a version, but no current.json yet.
    storage.write_bytes(str(tmp_path / "half_written" / "versions" / "v1" / "model.pt"), b"partial")
    publish(tmp_path, "complete")
    assert registry.list_styles(str(tmp_path)) == ["complete"]
    with pytest.raises(registry.ModelNotFound):
        registry.load_model(str(tmp_path), "half_written")


def test_republishing_switches_to_the_new_version_and_keeps_the_old(tmp_path):
    _, first = publish(tmp_path, seed=0)
    second_net, second = publish(tmp_path, seed=1)
    assert first != second
    assert registry.current_version(str(tmp_path), "starry_night") == second
    assert registry.read_metadata(str(tmp_path), "starry_night", first)["version"] == first


def test_a_tampered_model_file_is_refused(tmp_path):
    _, version = publish(tmp_path)
    model_path = tmp_path / "starry_night" / "versions" / version / "model.pt"
    model_path.write_bytes(model_path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="sha256"):
        registry.load_model(str(tmp_path), "starry_night")


def test_a_model_file_with_pickled_code_is_never_executed(tmp_path):
    _, version = publish(tmp_path)
    model_path = tmp_path / "starry_night" / "versions" / version / "model.pt"
    torch.save({"evil": torch.nn.Linear(1, 1)}, model_path)  # a pickled module: code on load
    metadata_path = model_path.with_name("metadata.json")
    metadata = json.loads(metadata_path.read_text())
    import hashlib
    metadata["model_sha256"] = hashlib.sha256(model_path.read_bytes()).hexdigest()
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        registry.load_model(str(tmp_path), "starry_night")


@pytest.mark.parametrize("name", ["../outside", "a/b", ".."])
def test_names_with_path_tricks_never_become_paths(tmp_path, name):
    with pytest.raises(ValueError, match="invalid style name"):
        registry.load_model(str(tmp_path), name)


def test_stray_folders_are_not_listed(tmp_path):
    (tmp_path / "Not A Style").mkdir()
    (tmp_path / "Not A Style" / "current.json").write_text("{}")
    publish(tmp_path, "ok")
    assert registry.list_styles(str(tmp_path)) == ["ok"]


def test_written_files_follow_the_umask_and_leave_no_temporary_files(tmp_path):
    import os
    import stat

    from factory import storage

    previous = os.umask(0o022)
    try:
        storage.write_bytes(str(tmp_path / "a" / "current.json"), b"{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a" / "current.json").stat().st_mode) == 0o644  # readable by other users
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["current.json"]


def test_a_version_is_written_file_by_file_and_only_then_pointed_at(tmp_path, monkeypatch):
    """A reader follows current.json (and index.json) to a version: every file of that version must be
    complete before either is written. The registry's writes are observed, and made for real."""
    written = []
    real_write = storage.write_bytes

    def observed(uri, data):
        written.append(uri.rsplit("/", 1)[-1])
        real_write(uri, data)

    monkeypatch.setattr(storage, "write_bytes", observed)
    torch.manual_seed(0)
    registry.publish(str(tmp_path), "alpha", TransformNet().state_dict(), {"steps": 1}, b"thumb", b"preview", onnx_model=b"onnx")
    pointers = [written.index(registry.METADATA_FILE), written.index(registry.POINTER_FILE), written.index(registry.INDEX_FILE)]
    files = [written.index(name) for name in (registry.MODEL_FILE, registry.ONNX_FILE, registry.THUMBNAIL_FILE, registry.PREVIEW_FILE)]
    assert max(files) < min(pointers), written  # the metadata names the model's sha256: after the files too
    assert pointers == sorted(pointers), written  # metadata, then current.json, then the index


class SlowSource:
    """A file-like source that pauses after its first chunk until told to go on."""

    def __init__(self, data: bytes, paused, resume):
        self.data, self.paused, self.resume, self.offset = data, paused, resume, 0

    def read(self, size=-1):
        if self.offset and not self.resume.is_set():
            self.paused.set()
            self.resume.wait(10)
        chunk = self.data[self.offset:self.offset + (size if size > 0 else len(self.data))]
        self.offset += len(chunk)
        return chunk


def test_a_file_being_written_is_never_seen_half_written_under_its_name(tmp_path, monkeypatch):
    import os
    import threading

    target = tmp_path / "versions" / "v1" / "model.pt"
    storage.write_bytes(str(target), b"the old complete file")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda descriptor: (synced.append(descriptor), real_fsync(descriptor)))
    paused, resume = threading.Event(), threading.Event()
    new = b"x" * (3 * storage.CHUNK_BYTES)
    writer = threading.Thread(target=storage.write_stream, args=(str(target), SlowSource(new, paused, resume)))
    writer.start()
    assert paused.wait(10)
    assert target.read_bytes() == b"the old complete file"  # mid-write: the old file whole, never a part of the new
    assert not synced  # nothing synced yet
    resume.set()
    writer.join(10)
    assert target.read_bytes() == new and synced  # on disk before the name pointed at it
    assert [path.name for path in target.parent.iterdir()] == ["model.pt"]  # the temporary file renamed, not left
