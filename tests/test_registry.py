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
