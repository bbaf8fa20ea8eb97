"""Each training worker's stream of content batches: a fixed order per epoch, and a position that
checkpoints carry, so a resumed run trains on the images the uninterrupted run would have.

Ray Train's dataset split hands blocks to whichever worker asks first (not deterministic:
ray-project/ray#58658), and a Ray Data iterator cannot be checkpointed (ray-project/ray#37633). So each
worker reads its own share: epoch e's order is a permutation of all items seeded by (seed, e), and rank
r of W takes every W-th item of it. An item is an image file, or a chunk of a prepared shard (a run of
its rows, read by byte range, then permuted by (seed, e, chunk)): chunks, not whole shards, so that a
few large shards still give every worker a share. Ray Data reads and decodes the share in parallel
tasks across the cluster and hands the rows over in order. After every batch the stream says where it
stands (epoch, item, row); a checkpoint keeps that for every worker, and a resumed worker starts its
share there without reading what it skips. Epochs follow each other without a pause in the step count: every worker takes
one batch per step, so workers stay in step even when their shares hold different numbers of usable
images (a corrupt file drops out of one share only).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow.fs
import ray

from factory import data

# Items per Ray Data block when reading image files: enough work per task to hide its overhead.
FILES_PER_BLOCK = 16
# Rows per chunk of a prepared shard (64 images of 256 px: 12.6 MB), fewer for a small data set so
# that it still splits into some 64 chunks.
MAX_CHUNK_ROWS = 64


@dataclass(frozen=True)
class ContentSource:
    """What the workers read: image files (paths), or chunks of prepared shards (shard_chunks)."""

    items: tuple
    shards: bool
    filesystem: pyarrow.fs.FileSystem
    image_size: int
    max_pixels: int
    ledger: object  # data.SkipLedger handle: files that fail to decode are counted there


@dataclass(frozen=True)
class StreamPosition:
    """Where a worker's stream stands: the next row to train on."""

    epoch: int = 0
    item: int = 0  # index into this worker's share of the epoch's order
    row: int = 0  # rows of that item already trained on (a shard holds many; an image file one)

    def as_list(self) -> list[int]:
        return [self.epoch, self.item, self.row]


class EmptyShare(RuntimeError):
    pass


def shard_chunks(paths: list[str], filesystem: pyarrow.fs.FileSystem, chunk_rows: int | None = None) -> list[tuple[str, int, int, int]]:
    """Prepared shards as chunks of rows: (path, byte offset of the first row, row count, bytes per row).
    chunk_rows: rows per chunk; by default MAX_CHUNK_ROWS, or fewer so that the data makes 64 chunks."""
    shards = []
    for path in paths:
        with filesystem.open_input_file(path) as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(handle)
            if fortran_order or dtype != np.uint8 or len(shape) != 4:
                raise ValueError(f"{path} is not a prepared shard (uint8 images, C order): prepare it again")
            shards.append((path, handle.tell(), shape[0], int(np.prod(shape[1:]))))
    total = sum(rows for _, _, rows, _ in shards)
    chunk_rows = chunk_rows or max(1, min(MAX_CHUNK_ROWS, total // 64))
    return [(path, offset + start * row_bytes, min(chunk_rows, rows - start), row_bytes)
            for path, offset, rows, row_bytes in shards for start in range(0, rows, chunk_rows)]


def worker_share(item_count: int, seed: int, epoch: int, rank: int, world_size: int) -> np.ndarray:
    """Indices into the source's items that this worker reads in this epoch, in order."""
    return np.random.default_rng([seed, epoch]).permutation(item_count)[rank::world_size]


def content_batches(source: ContentSource, seed: int, rank: int, world_size: int, batch_size: int,
                    start: StreamPosition = StreamPosition()) -> Iterator[tuple[np.ndarray, StreamPosition]]:
    """Endless (batch of (batch_size, size, size, 3) uint8 images, position after it) for one worker."""
    position = start
    while True:
        share = worker_share(len(source.items), seed, position.epoch, rank, world_size)
        batches = 0
        for batch in _epoch_batches(source, seed, position, share, batch_size):
            batches += 1
            yield batch["image"], StreamPosition(position.epoch, int(batch["item"][-1]), int(batch["row"][-1]) + 1)
        if batches == 0 and position == StreamPosition(position.epoch):
            raise EmptyShare(
                f"worker {rank}'s share of the content ({len(share)} of {len(source.items)} "
                f"{'shard chunks' if source.shards else 'files'}) gave no full batch of {batch_size}: add images "
                f"or lower training.batch_size"
            )
        position = StreamPosition(position.epoch + 1)


def _epoch_batches(source: ContentSource, seed: int, position: StreamPosition, share: np.ndarray, batch_size: int):
    items = [{"source": source.items[index], "item": number, "skip": position.row if number == position.item else 0,
              "rows_seed": [seed, position.epoch, int(index)]}
             for number, index in enumerate(share) if number >= position.item]
    if not items:
        return
    # The rows in the order of the share, whichever task finishes first: what makes a run repeatable.
    data.quiet_ray_data().execution_options.preserve_order = True
    if source.shards:
        # Small chunks (a small data set) go several to a task: some MAX_CHUNK_ROWS rows per task.
        chunks_per_task = max(1, MAX_CHUNK_ROWS // source.items[0][2])
        dataset = ray.data.from_items(items, override_num_blocks=-(-len(items) // chunks_per_task))
        dataset = dataset.map_batches(_read_chunk, batch_size=1, batch_format="numpy",
                                      fn_kwargs={"filesystem": source.filesystem, "image_size": source.image_size})
    else:
        dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items) // FILES_PER_BLOCK))
        dataset = dataset.map_batches(_read_files, batch_size=FILES_PER_BLOCK, batch_format="numpy",
                                      fn_kwargs={"filesystem": source.filesystem, "image_size": source.image_size,
                                                 "max_pixels": source.max_pixels, "ledger": source.ledger})
    yield from dataset.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=True, prefetch_batches=2)


def _read_files(batch: dict, filesystem: pyarrow.fs.FileSystem, image_size: int, max_pixels: int, ledger) -> dict:
    """Image files -> decoded rows (row 0 of each item), minus those missing or unusable."""
    wanted = batch["skip"] == 0  # a resumed worker has already trained on the item it stopped at
    paths = [str(path) for path in batch["source"][wanted]]
    # Side by side: on S3 each file is a request of tens of milliseconds, and a task's sixteen read one
    # after another held it to about a hundred images a second, too few for a fast GPU.
    with ThreadPoolExecutor(max_workers=max(1, len(paths))) as readers:
        contents = list(readers.map(lambda path: data.read_file(filesystem, path), paths))
    readable = [index for index, content in enumerate(contents) if content is not None]
    missing = {path: "missing: deleted since it was listed" for path, content in zip(paths, contents) if content is None}
    if missing:
        data.record_skipped(ledger, missing)
    decoded = data.decode_batch({"bytes": [contents[index] for index in readable], "path": np.asarray(paths)[readable],
                                 "item": batch["item"][wanted][readable]}, image_size, max_pixels, ledger)
    return {"image": decoded["image"], "item": decoded["item"], "row": np.zeros(len(decoded["item"]), np.int64)}


def _read_chunk(batch: dict, filesystem: pyarrow.fs.FileSystem, image_size: int) -> dict:
    """One chunk of a prepared shard -> its rows in this epoch's order for it, from the first not yet
    trained on. Only the chunk's bytes are read (a range request on S3)."""
    path, offset, count, row_bytes = batch["source"][0]

    def read() -> bytes:
        with filesystem.open_input_file(str(path)) as handle:
            return handle.read_at(int(count) * int(row_bytes), int(offset))
    raw = data.read_with_retries(read, str(path))
    if raw is None:  # a prepared shard is never deleted on purpose: its set is broken
        raise data.ContentReadError(f"the prepared shard {path} is gone: prepare the shards again (factory/prepare_shards.py)")
    rows = np.frombuffer(raw, np.uint8).reshape(int(count), image_size, image_size, 3)
    order = np.random.default_rng(list(batch["rows_seed"][0])).permutation(len(rows))
    skip = min(int(batch["skip"][0]), len(rows))
    return {"image": rows[order[skip:]], "item": np.full(len(rows) - skip, batch["item"][0]),
            "row": np.arange(skip, len(rows))}


def sample_images(source: ContentSource, count: int) -> list[np.ndarray]:
    """Up to count content images as (H, W, 3) uint8 arrays, read in the driver: the first image files of
    the source, or the first rows of its first prepared shard chunk. For calibrating int8 copies of the
    models (factory/onnx_int8.py), so files that cannot be read or decoded are left out, not counted."""
    if source.shards:
        path, offset, rows, row_bytes = source.items[0]
        with source.filesystem.open_input_file(str(path)) as handle:
            raw = handle.read_at(min(count, int(rows)) * int(row_bytes), int(offset))
        return list(np.frombuffer(raw, np.uint8).reshape(-1, source.image_size, source.image_size, 3))
    from factory import images

    found = []
    for path in dict.fromkeys(source.items):  # a small set is listed several times over: each file once
        try:
            content = data.read_file(source.filesystem, str(path))
        except OSError:  # unreadable now: training will say so if it stays so
            continue
        if content is None:
            continue
        try:
            found.append(np.asarray(images.decode_rgb(content, max_pixels=source.max_pixels)))
        except images.ImageRejected:
            continue
        if len(found) == count:
            break
    return found
