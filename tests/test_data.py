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
    import pytest

    with pytest.raises(FileNotFoundError, match="no image folder at .*train2014"):
        data.list_image_files(DataSettings(source=str(tmp_path / "train2014")))
