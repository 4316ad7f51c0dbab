"""One small file API over local folders and `s3://bucket/prefix` URLs.

Shards, manifests and checkpoints live either on a local disk (a laptop, CI) or in object storage
(a cluster). Every pipeline touches storage through these functions so both behave the same:
writes are atomic (a reader never sees half a file), listings are flat, and an unreachable
endpoint or a missing bucket is reported before a long job starts (`check_reachable`).

S3 is reached through `pyarrow.fs.S3FileSystem` (the same client Ray Data uses). The endpoint and
region come from the standard AWS variables (`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`,
`AWS_REGION` / `AWS_DEFAULT_REGION`). Credentials are never read here: the client uses the AWS
default credential chain of the process that opens a file (environment, profile, web identity
(IRSA), instance profile), which refreshes temporary credentials as they rotate. A client built
on the driver and pickled to a worker therefore carries no keys; the worker uses its node's.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

import pyarrow.fs as pafs

S3_SCHEME = "s3://"
# Where S3 is, never who you are: these settings may travel with a job; credentials may not.
AWS_ENV_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
DEFAULT_REGION = "us-east-1"
TMP_MARKER = ".tmp-"  # local temporary files are "<name>.tmp-<random>"; strays are safe to delete


class StorageError(RuntimeError):
    """A storage location cannot be used (unreachable endpoint, missing bucket, bad URL)."""


@dataclass(frozen=True)
class FileEntry:
    """A file in a listing: its base name, size in bytes and modification time (ns)."""

    name: str
    size: int
    mtime_ns: int


def is_s3(url: str) -> bool:
    return str(url).startswith(S3_SCHEME)


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URL with "/"."""
    out = str(base).rstrip("/")
    for part in parts:
        out = f"{out}/{str(part).strip('/')}"
    return out


def aws_environment() -> dict[str, str]:
    """The S3 endpoint/region variables set here, to forward to Ray workers (no credentials)."""
    return {name: os.environ[name] for name in AWS_ENV_VARS if os.environ.get(name)}


def s3_filesystem(*, connect_timeout: float = 5.0, max_attempts: int = 3) -> pafs.S3FileSystem:
    """An S3 client for the configured endpoint that resolves credentials where it is used."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict = {
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
        "connect_timeout": connect_timeout,
        "request_timeout": max(connect_timeout, 30.0),
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts),
    }
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["scheme"] = parsed.scheme
        kwargs["endpoint_override"] = parsed.netloc
    return pafs.S3FileSystem(**kwargs)


def resolve(url: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for Ray Data / pyarrow: S3 paths are given as "bucket/key"."""
    if is_s3(url):
        return s3_filesystem(), _s3_path(url)
    return pafs.LocalFileSystem(), str(Path(url).absolute())


def _s3_path(url: str) -> str:
    path = str(url)[len(S3_SCHEME):].strip("/")
    if not path:
        raise StorageError(f"{url!r} names no bucket; use s3://bucket/prefix")
    return path


def read_bytes(url: str) -> bytes:
    if not is_s3(url):
        return Path(url).read_bytes()
    with s3_filesystem().open_input_stream(_s3_path(url)) as stream:
        return stream.read()


def open_input(url: str) -> IO[bytes]:
    """A readable binary stream (sequential; enough for tar streaming)."""
    if not is_s3(url):
        return open(url, "rb")
    return s3_filesystem().open_input_stream(_s3_path(url))


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole file atomically: a temp name then a rename locally, one PUT on S3."""
    if is_s3(url):
        with s3_filesystem().open_output_stream(_s3_path(url)) as stream:
            stream.write(data)
        return
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARKER}{uuid.uuid4().hex[:12]}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def open_output(url: str) -> Iterator[IO[bytes]]:
    """A stream for a large file (written in pieces); it exists under `url` only if the block
    ends without an error (a local temp name then a rename; on S3 a failed upload is deleted)."""
    if is_s3(url):
        fs, path = s3_filesystem(), _s3_path(url)
        stream = fs.open_output_stream(path)
        try:
            yield stream
        except BaseException:
            stream.close()
            fs.delete_file(path)
            raise
        stream.close()
        return
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARKER}{uuid.uuid4().hex[:12]}")
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def stat(url: str) -> FileEntry | None:
    """Size and mtime of one file, or None when it does not exist."""
    if not is_s3(url):
        path = Path(url)
        if not path.is_file():
            return None
        info = path.stat()
        return FileEntry(path.name, info.st_size, info.st_mtime_ns)
    info = s3_filesystem().get_file_info(_s3_path(url))
    if info.type != pafs.FileType.File:
        return None
    return FileEntry(info.base_name, info.size, _mtime_ns(info))


def exists(url: str) -> bool:
    return stat(url) is not None


def list_files(url: str) -> list[FileEntry]:
    """The files directly inside a folder / prefix, sorted by name; empty when it is absent."""
    if not is_s3(url):
        folder = Path(url)
        if not folder.is_dir():
            return []
        return sorted(
            (FileEntry(p.name, p.stat().st_size, p.stat().st_mtime_ns)
             for p in folder.iterdir() if p.is_file()),
            key=lambda e: e.name,
        )
    selector = pafs.FileSelector(_s3_path(url), allow_not_found=True, recursive=False)
    infos = s3_filesystem().get_file_info(selector)
    return sorted(
        (FileEntry(i.base_name, i.size, _mtime_ns(i)) for i in infos if i.type == pafs.FileType.File),
        key=lambda e: e.name,
    )


def delete(url: str) -> None:
    """Remove one file; a missing file is not an error."""
    if not is_s3(url):
        Path(url).unlink(missing_ok=True)
        return
    fs = s3_filesystem()
    path = _s3_path(url)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def check_reachable(url: str) -> None:
    """Fail early, with a message a user can act on, when `url` cannot be used for I/O.

    Locally the nearest existing parent must be a writable folder. On S3 the endpoint must
    answer and the bucket must exist (buckets are never created implicitly).
    """
    if not is_s3(url):
        path = Path(url).absolute()
        parent = path
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise StorageError(f"{url}: {parent} exists and is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise StorageError(f"{url}: folder {parent} is not writable")
        return
    bucket = _s3_path(url).split("/", 1)[0]
    endpoint = (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                or "the default AWS endpoint")
    fs = s3_filesystem(connect_timeout=2.0, max_attempts=1)
    try:
        info = fs.get_file_info(bucket)
    except OSError as error:
        raise StorageError(
            f"{url}: S3 endpoint {endpoint} is unreachable or refused the request "
            f"(check AWS_ENDPOINT_URL and the credentials): {error}"
        ) from error
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"{url}: bucket {bucket!r} does not exist at {endpoint}; create it first")


def _mtime_ns(info: pafs.FileInfo) -> int:
    return int(info.mtime_ns) if info.mtime_ns is not None else 0
