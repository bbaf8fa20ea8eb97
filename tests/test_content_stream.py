"""Each worker's content stream (factory/content_stream.py), on a real local Ray: every usable image
once per epoch across the workers, a new order every epoch, and a stream resumed from a position that
goes on with exactly the batches the uninterrupted stream gave."""

import hashlib
import io

import pytest
from PIL import Image

from factory import data, prepare_shards
from factory.content_stream import ContentSource, EmptyShare, StreamPosition, content_batches, shard_chunks
from factory.settings import DataSettings

SEED = 7


def file_source(folder, image_size=32) -> ContentSource:
    settings = DataSettings(source=str(folder), image_size=image_size)
    filesystem, paths, _ = data.list_image_files(settings)
    return ContentSource(tuple(paths), False, filesystem, image_size, settings.max_image_pixels, data.SkipLedger.remote())


def take(source, count, rank=0, world_size=1, batch_size=2, start=StreamPosition()) -> list:
    stream = content_batches(source, SEED, rank, world_size, batch_size, start)
    taken = [next(stream) for _ in range(count)]
    stream.close()
    return taken


def fingerprints(images) -> list[str]:
    return [hashlib.sha256(image.tobytes()).hexdigest()[:16] for image in images]


def test_every_usable_image_once_per_epoch_across_the_workers_and_a_new_order_each_epoch(ray_local, dirty_images):
    folder, expected = dirty_images
    source = file_source(folder)
    by_epoch = {0: [], 1: []}
    for rank in (0, 1):
        order = {0: [], 1: []}
        for images, position in take(source, 8, rank=rank, world_size=2):
            assert images.shape == (2, 32, 32, 3) and images.dtype.name == "uint8"
            if position.epoch in order:
                order[position.epoch] += fingerprints(images)
        assert order[0] and order[1] and order[0] != order[1], "the same order in two epochs"
        for epoch, seen in order.items():
            by_epoch[epoch] += seen
    for seen in by_epoch.values():
        assert len(seen) == len(set(seen)), "an image twice in one epoch"
        # Each worker's last partial batch waits for the next epoch's share: at most batch - 1 each.
        assert expected["usable"] - 2 <= len(seen) <= expected["usable"]


def test_a_resumed_stream_goes_on_with_the_batches_the_run_would_have_had(ray_local, dirty_images):
    folder, _ = dirty_images
    source = file_source(folder)
    for rank in (0, 1):
        uninterrupted = take(source, 7, rank=rank, world_size=2)
        assert uninterrupted[-1][1].epoch >= 1  # the run crosses into a second epoch
        for stop in (1, 3):  # within the first epoch, and across into the next
            resumed = take(source, 7 - stop - 1, rank=rank, world_size=2, start=uninterrupted[stop][1])
            for (images, position), (expected_images, expected_position) in zip(resumed, uninterrupted[stop + 1:]):
                assert position == expected_position
                assert fingerprints(images) == fingerprints(expected_images)


def test_shard_chunks_are_read_in_a_new_order_each_epoch_and_resume_within_a_chunk(ray_local, dirty_images, tmp_path):
    folder, expected = dirty_images
    assert prepare_shards.main(["--source", str(folder), "--dest", str(tmp_path / "shards"), "--image-size", "32",
                                "--images-per-shard", "5"]) == 0
    import pyarrow.fs

    paths = data.list_shard_files(str(tmp_path / "shards"))
    filesystem = pyarrow.fs.LocalFileSystem()
    # By default a data set this small is cut into one-row chunks, so that any number of workers gets
    # a share; chunks of whole shards here, so that a worker stops inside one.
    assert [rows for _, _, rows, _ in shard_chunks(paths, filesystem)] == [1] * expected["usable"]
    source = ContentSource(tuple(shard_chunks(paths, filesystem, chunk_rows=5)), True, filesystem, 32, 10**8,
                           data.SkipLedger.remote())
    uninterrupted = take(source, 8, batch_size=3)
    epochs = [[fingerprint for images, position in uninterrupted if position.epoch == epoch for fingerprint in fingerprints(images)]
              for epoch in (0, 1)]
    assert len(epochs[0]) == len(set(epochs[0])) == 3 * (expected["usable"] // 3)
    assert epochs[1][:len(epochs[0])] != epochs[0]  # rows too are in a new order, not only the shards
    assert uninterrupted[0][1] == StreamPosition(0, 0, 3)  # chunks of 5, 5 and 4: three rows into the first
    for stop in (0, 4):  # within a chunk, and into the next epoch
        resumed = take(source, 3, batch_size=3, start=uninterrupted[stop][1])
        for (images, position), (expected_images, expected_position) in zip(resumed, uninterrupted[stop + 1:]):
            assert position == expected_position and fingerprints(images) == fingerprints(expected_images)


def test_a_share_without_one_full_batch_says_what_to_do(ray_local, tmp_path):
    (tmp_path / "few").mkdir()
    for index in range(2):
        Image.new("RGB", (40, 40), (index * 100, 50, 50)).save(tmp_path / "few" / f"{index}.png")
    with pytest.raises(EmptyShare, match="gave no full batch of 3: add images or lower training.batch_size"):
        take(file_source(tmp_path / "few"), 1, batch_size=3)


def test_shard_chunks_on_s3_read_only_their_rows_by_byte_range(s3_server):
    import boto3
    import numpy as np

    from factory import storage
    from factory.content_stream import _read_chunk

    boto3.client("s3").create_bucket(Bucket="shards")
    rows = np.random.default_rng(0).integers(0, 255, (10, 8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    np.save(buffer, rows)
    storage.write_bytes("s3://shards/train/shard_0.npy", buffer.getvalue())
    filesystem, root = storage.pyarrow_filesystem("s3://shards/train")
    chunks = shard_chunks([f"{root}/shard_0.npy"], filesystem, chunk_rows=4)
    assert [count for _, _, count, _ in chunks] == [4, 4, 2]
    seed = [SEED, 0, 1]
    read = _read_chunk({"source": [chunks[1]], "rows_seed": [seed], "skip": [1], "item": [0]}, filesystem, image_size=8)
    expected = rows[4:8][np.random.default_rng(seed).permutation(4)][1:]
    assert np.array_equal(read["image"], expected) and list(read["row"]) == [1, 2, 3]
