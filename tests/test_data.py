import pytest
import ray

from factory import data
from factory.settings import DataSettings


def test_dirty_folder_streams_every_usable_image_and_counts_the_rest(ray_local, dirty_images):
    folder, expected = dirty_images
    (folder / ".hidden.jpg").write_bytes(b"editor backup")  # hidden files are not data
    settings = DataSettings(source=str(folder), image_size=32)
    ledger = data.SkipLedger.remote()
    filesystem, paths, oversized = data.list_image_files(settings)
    assert not oversized and not any(".hidden" in path for path in paths)
    rows = data.content_dataset(settings, paths, filesystem, ledger).take_all()
    assert len(rows) == expected["usable"]  # grayscale and CMYK converted, not dropped
    assert all(row["image"].shape == (32, 32, 3) and row["image"].dtype.name == "uint8" for row in rows)
    summary = ray.get(ledger.summary.remote())
    assert summary["count"] == expected["skipped"]
    skipped_files = {path.rsplit("/", 1)[-1] for path, _ in summary["examples"]}
    assert skipped_files == {"corrupt.jpg", "truncated.jpg", "empty.jpg", "notes.txt"}


def test_oversized_files_are_skipped_unread(dirty_images):
    folder, _ = dirty_images
    (folder / "huge.jpg").write_bytes(b"\xff" * 100_000)
    _, paths, oversized = data.list_image_files(DataSettings(source=str(folder), max_file_bytes=50_000))
    assert [path.rsplit("/", 1)[-1] for path in oversized] == ["huge.jpg"]
    assert not any(path.endswith("huge.jpg") for path in paths)


def test_missing_source_says_where_to_put_the_images(tmp_path):

    with pytest.raises(FileNotFoundError, match="no image folder at .*train2014"):
        data.list_image_files(DataSettings(source=str(tmp_path / "train2014")))


def test_prepared_shards_hold_every_usable_image_and_stream_like_files(ray_local, dirty_images, tmp_path):
    from factory import prepare_shards

    folder, expected = dirty_images
    dest = tmp_path / "shards"
    assert prepare_shards.main(["--source", str(folder), "--dest", str(dest), "--image-size", "32", "--images-per-shard", "5"]) == 0
    manifest = data.shard_manifest(DataSettings(source=str(dest), image_size=32))
    assert manifest["count"] == expected["usable"] and manifest["skipped"]["count"] == expected["skipped"]
    paths = data.list_shard_files(str(dest))
    assert paths and all(path.endswith(".npy") for path in paths)
    import pyarrow.fs

    rows = data.shard_dataset(paths, pyarrow.fs.LocalFileSystem()).take_all()
    assert len(rows) == expected["usable"] and rows[0]["image"].shape == (32, 32, 3)
    with pytest.raises(ValueError, match="hold 32 px images but data.image_size is 64"):
        data.shard_manifest(DataSettings(source=str(dest), image_size=64))
    assert prepare_shards.main(["--source", str(folder), "--dest", str(dest), "--image-size", "32"]) == 2  # never overwritten
