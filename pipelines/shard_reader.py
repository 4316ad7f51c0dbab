"""Read one shard whole, verifying its sha256 on the bytes as they stream in.

A shard is parsed as a tar stream that hashes every byte it hands over (no second pass over
the data), and its records are released only once the hash, the
size and the sample count match the manifest. A mismatch, a truncated or unreadable tar is a
`DamagedShard`: the caller excludes the shard as a whole and names it.

Shards on S3 are kept in a node-local cache (`ShardCache`), written while they download and
addressed by their sha256, so later epochs and the other loader processes of the node read the
local copy (verified again as it is read, cheaply). Local shards are read in place.
"""

from __future__ import annotations

import contextlib
import os
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pipelines import storage
from pipelines.manifest import ShardEntry

CHUNK_BYTES = 1 << 20
DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "read-shard-cache"


class DamagedShard(Exception):
    """A shard whose bytes do not match its manifest entry, or that cannot be parsed."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url, self.reason = url, reason


class _HashingReader:
    """A read-only stream that hashes (and optionally copies) every byte read through it."""

    def __init__(self, stream: IO[bytes], sink: IO[bytes] | None = None) -> None:
        import hashlib

        self._stream, self._sink = stream, sink
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if data:
            self.digest.update(data)
            self.size += len(data)
            if self._sink is not None:
                self._sink.write(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK_BYTES):
            pass


@dataclass
class ShardCache:
    """Node-local copies of remote shards, named by sha256, evicted oldest first."""

    folder: Path = DEFAULT_CACHE_DIR
    max_bytes: int = 50 * 2**30

    def path(self, sha256: str) -> Path:
        return Path(self.folder) / f"{sha256}.tar"

    def hit(self, sha256: str) -> Path | None:
        path = self.path(sha256)
        try:
            os.utime(path)  # recently used: evicted last
        except OSError:
            return None
        return path

    def evict(self) -> None:
        """Remove the least recently used files until the folder fits `max_bytes`."""
        entries = []
        for path in Path(self.folder).glob("*.tar"):
            with contextlib.suppress(OSError):
                info = path.stat()
                entries.append((info.st_mtime, info.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(OSError):
                path.unlink()
            total -= size


def read_shard(url: str, entry: ShardEntry, cache: ShardCache | None = None
               ) -> list[dict[str, Any]]:
    """The shard's WebDataset records ({"__key__", member: bytes}) in tar order, verified."""
    if cache is not None and storage.is_s3(url):
        local = cache.hit(entry.sha256)
        if local is not None:
            try:
                with open(local, "rb") as stream:
                    return _verified_records(url, entry, _HashingReader(stream))
            except DamagedShard:
                local.unlink(missing_ok=True)  # a damaged local copy: fetch it again
            except FileNotFoundError:
                pass  # evicted meanwhile by another process
        return _download_into_cache(url, entry, cache)
    try:
        stream = storage.open_input(url)
    except (FileNotFoundError, OSError) as error:
        raise DamagedShard(url, f"cannot open ({error})") from error
    with stream:
        return _verified_records(url, entry, _HashingReader(stream))


def _download_into_cache(url: str, entry: ShardEntry, cache: ShardCache) -> list[dict[str, Any]]:
    folder = Path(cache.folder)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{entry.sha256}.{uuid.uuid4().hex[:8]}.part"
    try:
        with storage.open_input(url) as stream, open(partial, "wb") as sink:
            records = _verified_records(url, entry, _HashingReader(stream, sink))
        os.replace(partial, cache.path(entry.sha256))
    except (FileNotFoundError, OSError) as error:
        raise DamagedShard(url, f"cannot read ({error})") from error
    finally:
        partial.unlink(missing_ok=True)
    cache.evict()
    return records


def _verified_records(url: str, entry: ShardEntry, reader: _HashingReader
                      ) -> list[dict[str, Any]]:
    try:
        records = list(_group(reader, url))
        reader.drain()  # the tar's end-of-archive padding belongs to the hashed bytes too
    except (tarfile.TarError, EOFError, OSError, ValueError) as error:
        reader.drain()
        raise DamagedShard(url, f"unreadable tar after {reader.size} bytes ({error})") from error
    if reader.size != entry.bytes:
        raise DamagedShard(url, f"{reader.size} bytes, the manifest says {entry.bytes}")
    if reader.digest.hexdigest() != entry.sha256:
        raise DamagedShard(url, "sha256 differs from the manifest")
    if len(records) != entry.num_samples:
        raise DamagedShard(url, f"{len(records)} samples, the manifest says {entry.num_samples}")
    return records


def _group(reader: _HashingReader, url: str) -> Iterator[dict[str, Any]]:
    """Members of a streamed tar grouped into samples: `<key>.<member>` files, consecutive.

    (The standard library's stream mode, not `webdataset.tariterators`: importing webdataset
    imports torch, seconds per Ray read task.)
    """
    current: dict[str, Any] = {}
    with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
        for info in tar:
            if not info.isreg():
                continue
            key, dot, member = info.name.partition(".")
            if not dot or "/" in info.name:
                raise ValueError(f"member {info.name!r} is not <key>.<member>")
            if current and current["__key__"] != key:
                yield current
                current = {}
            handle = tar.extractfile(info)
            data = handle.read() if handle is not None else b""
            if len(data) != info.size:
                raise EOFError(f"member {info.name} truncated at {len(data)} of {info.size} bytes")
            if member in current:
                raise ValueError(f"{url}: sample {key!r} holds {member!r} twice")
            current.setdefault("__key__", key)
            current[member] = data
    if current:
        yield current
