"""Read and write blobs at a local path or an s3://bucket/key URI through one small interface.

S3 goes through boto3 (and pyarrow for Ray Data and Ray Train), configured the standard AWS way:
credentials, AWS_DEFAULT_REGION and, for S3-compatible servers, AWS_ENDPOINT_URL. boto3 follows a
bucket to its region by itself; pyarrow does not (it signs for AWS_DEFAULT_REGION or the node's own
region and gets 301 from a bucket elsewhere), so its filesystems are given the bucket's region.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

import pyarrow.fs

CHUNK_BYTES = 1024 * 1024


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b')."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket: expected s3://bucket/prefix")
    return bucket, key.strip("/")


def join(uri: str, *parts: str) -> str:
    if is_s3(uri):
        return "/".join([uri.rstrip("/"), *(part.strip("/") for part in parts)])
    return str(Path(uri, *parts))


def absolute(uri: str) -> str:
    """Local paths made absolute, so they mean the same on Ray workers (whose cwd differs)."""
    return uri if is_s3(uri) else str(Path(uri).resolve())


@functools.lru_cache(maxsize=1)
def _s3_client():
    import boto3  # S3 users only
    from botocore.config import Config

    # Bounded: boto3's defaults wait 60 s per read and retry, and a serving replica's model load or a
    # registry refresh would hang that long behind one slow request. Connections for the registry's
    # 16 parallel readers (serve/registry_view.py) and a task's 16 parallel file reads.
    config = Config(connect_timeout=5, read_timeout=20, retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=32)
    return boto3.client("s3", config=config)  # honours AWS_ENDPOINT_URL, AWS_DEFAULT_REGION and the credential chain


def read_bytes(uri: str) -> bytes:
    """The whole object or file; FileNotFoundError (naming the URI) when it is absent."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = _s3_client()
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"no object at {uri}") from None
        except client.exceptions.NoSuchBucket:
            raise FileNotFoundError(f"no bucket for {uri}") from None
    path = Path(uri)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {uri}")
    return path.read_bytes()


def read_if_changed(uri: str, tag: str | None) -> tuple[bytes | None, str]:
    """(the content, its tag), or (None, tag) when it is unchanged since `tag` was read: on S3 a
    conditional GET (If-None-Match on the ETag, 304 with no body); on disk, the size and mtime.
    FileNotFoundError when absent."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = _s3_client()
        try:
            response = client.get_object(Bucket=bucket, Key=key, **({"IfNoneMatch": tag} if tag else {}))
        except client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"no object at {uri}") from None
        except client.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("304", "NotModified"):
                return None, tag
            raise
        return response["Body"].read(), response["ETag"]
    path = Path(uri)
    try:
        status = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"no file at {uri}") from None
    current = f"{status.st_mtime_ns}-{status.st_size}-{status.st_ino}"
    if current == tag:
        return None, tag
    return path.read_bytes(), current


def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically: a reader sees the old content or the new, never a part (S3 PUTs are atomic)."""
    write_stream(uri, io.BytesIO(data))


def write_stream(uri: str, source: BinaryIO) -> None:
    """write_bytes for a file-like source, copied in chunks: never held whole in memory (an S3 upload
    goes in parts, and becomes visible only when complete)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        _s3_client().upload_fileobj(source, bucket, key)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        temporary = Path(handle.name)
        try:
            shutil.copyfileobj(source, handle, CHUNK_BYTES)
            handle.flush()
            os.fsync(handle.fileno())  # the bytes are on disk before the name points at them
            # NamedTemporaryFile makes 0600 files; a registry on a shared filesystem must be readable
            # by the other users' serving and training processes: the usual umask applies instead.
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
        except BaseException:
            handle.close()
            temporary.unlink(missing_ok=True)
            raise
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask, read without os.umask(), whose set-and-restore would briefly give other
    threads' new files no umask at all."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022  # the common default where /proc is absent


def exists(uri: str) -> bool:
    if not is_s3(uri):
        return Path(uri).is_file()
    bucket, key = split_s3(uri)
    client = _s3_client()
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except client.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NoSuchBucket"):
            return False
        raise


def delete(uri: str) -> None:
    """Remove one object or file; nothing happens when it is absent."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        _s3_client().delete_object(Bucket=bucket, Key=key)
        return
    Path(uri).unlink(missing_ok=True)


def delete_tree(uri: str) -> int:
    """Remove a folder or an S3 prefix with everything under it; returns how many files or objects went."""
    if not is_s3(uri):
        path = Path(uri)
        if not path.is_dir():
            return 0
        count = sum(1 for child in path.rglob("*") if child.is_file())
        shutil.rmtree(path)
        return count
    bucket, prefix = split_s3(uri)
    client, count = _s3_client(), 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        keys = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
        if keys:  # at most 1,000 a page, as DeleteObjects takes
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            count += len(keys)
    return count


def has_content(uri: str) -> bool:
    """Whether a file, or a folder or S3 prefix holding at least one object, is at `uri`."""
    if not is_s3(uri):
        return Path(uri).is_file() or (Path(uri).is_dir() and any(Path(uri).iterdir()))
    bucket, key = split_s3(uri)
    return bool(_s3_client().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("KeyCount", 0))


def list_subfolders(uri: str) -> list[str]:
    """Names of the immediate 'folders' under `uri` (S3: common prefixes), sorted; [] when absent."""
    if is_s3(uri):
        bucket, prefix = split_s3(uri)
        prefix = f"{prefix}/" if prefix else ""
        names = []
        for page in _s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            names += [entry["Prefix"][len(prefix):].rstrip("/") for entry in page.get("CommonPrefixes", [])]
        return sorted(names)
    path = Path(uri)
    return sorted(child.name for child in path.iterdir() if child.is_dir()) if path.is_dir() else []


@functools.lru_cache(maxsize=64)
def bucket_region(bucket: str) -> str | None:
    """The region a bucket lives in, as S3 reports it (HeadBucket's x-amz-bucket-region, which AWS sends
    even with a 301 or 403); None when the server names none."""
    client = _s3_client()
    try:
        response = client.head_bucket(Bucket=bucket)
        headers = response["ResponseMetadata"].get("HTTPHeaders", {})
    except client.exceptions.ClientError as error:
        headers = error.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        code = error.response.get("Error", {}).get("Code")
        if code in ("404", "NoSuchBucket") and not headers.get("x-amz-bucket-region"):
            raise FileNotFoundError(f"no bucket named {bucket!r}: create it (aws s3 mb s3://{bucket}) or fix the s3:// path") from None
    return headers.get("x-amz-bucket-region") or None


def pyarrow_filesystem(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for Ray Data reads and Ray Train storage."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        options = {}
        if os.environ.get("AWS_ENDPOINT_URL"):  # an S3-compatible server rather than AWS
            options["endpoint_override"] = os.environ["AWS_ENDPOINT_URL"]
        region = bucket_region(bucket) or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            options["region"] = region
        return pyarrow.fs.S3FileSystem(**options), f"{bucket}/{key}".rstrip("/")
    return pyarrow.fs.LocalFileSystem(), str(Path(uri).resolve())
