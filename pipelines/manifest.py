"""The manifest of one built shard set: its one type, one reader and one writer.

`manifest.json` sits beside the shards of a version folder (docs/architecture.md §2). It is the
last file a build writes, so a folder without one is an unfinished build and is refused. Every
consumer (training, evaluation, the builder, the workflow) goes through `read_manifest`; the only
writer is `write_manifest`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dataset_builders.sample import QuarantineEntry
from pipelines import storage
from pipelines.shard_format import READABLE_SCHEMAS, SCHEMA_VERSION

MANIFEST_NAME = "manifest.json"


class ManifestError(RuntimeError):
    """A manifest is missing, unreadable, of another schema, or inconsistent."""


@dataclass(frozen=True)
class ShardEntry:
    """One tar of a shard set, as the build wrote it."""

    name: str
    num_samples: int
    sha256: str
    bytes: int
    num_queries: int = 0


@dataclass(frozen=True)
class Manifest:
    """What a build produced for one `<dataset>/<split>`."""

    dataset: str
    split: str
    shards: tuple[ShardEntry, ...]
    quarantine: tuple[QuarantineEntry, ...] = ()
    fingerprint: str = ""  # hash of inputs, options and builder code ("" for in-process writes)
    shard_size_bytes: int = 0
    min_shards: int = 1  # the shard count the build aimed for at least (ranks x loader workers)
    schema: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # fields of newer writers, kept verbatim

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    @property
    def num_queries(self) -> int:
        return sum(s.num_queries for s in self.shards)

    @property
    def num_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    @property
    def content_hash(self) -> str:
        return content_hash([s.sha256 for s in self.shards])

    def to_json(self) -> bytes:
        payload = {
            **self.extra,
            "schema": self.schema, "dataset": self.dataset, "split": self.split,
            "num_samples": self.num_samples, "num_queries": self.num_queries,
            "shards": [_shard_dict(s) for s in self.shards],
            "quarantine": [{"source": q.source, "record_id": q.record_id, "reason": q.reason}
                           for q in self.quarantine],
            "content_hash": self.content_hash, "fingerprint": self.fingerprint,
            "shard_size_bytes": self.shard_size_bytes, "min_shards": self.min_shards,
        }
        return json.dumps(payload, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str = "manifest") -> Manifest:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as error:
            raise ManifestError(f"{where}: not JSON ({error})") from error
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: expected a JSON object")
        if data.get("schema") not in READABLE_SCHEMAS:
            raise ManifestError(f"{where}: shard schema {data.get('schema')!r}, this reader "
                                f"understands {list(READABLE_SCHEMAS)}")
        try:
            shards = tuple(ShardEntry(str(s["name"]), int(s["num_samples"]), str(s["sha256"]),
                                      int(s["bytes"]), int(s.get("num_queries", 0)))
                           for s in data["shards"])
            quarantine = tuple(QuarantineEntry(str(q["source"]), str(q["record_id"]),
                                               str(q["reason"])) for q in data["quarantine"])
            known = {"schema", "dataset", "split", "num_samples", "num_queries", "shards",
                     "quarantine", "content_hash", "fingerprint", "shard_size_bytes",
                     "min_shards"}
            manifest = cls(dataset=str(data["dataset"]), split=str(data["split"]),
                           shards=shards, quarantine=quarantine,
                           fingerprint=str(data.get("fingerprint", "")),
                           shard_size_bytes=int(data.get("shard_size_bytes", 0)),
                           min_shards=int(data.get("min_shards", 1)),
                           extra={k: v for k, v in data.items() if k not in known})
        except (KeyError, TypeError, ValueError) as error:
            raise ManifestError(f"{where}: malformed manifest ({error!r})") from error
        if int(data.get("num_samples", manifest.num_samples)) != manifest.num_samples:
            raise ManifestError(f"{where}: num_samples disagrees with its shard list")
        if data.get("content_hash", manifest.content_hash) != manifest.content_hash:
            raise ManifestError(f"{where}: content_hash disagrees with its shard sha256s")
        return manifest


def content_hash(shard_sha256s: Sequence[str]) -> str:
    """sha256 over the sorted shard sha256s: the identity of a shard set's bytes."""
    return hashlib.sha256("\n".join(sorted(shard_sha256s)).encode("ascii")).hexdigest()


def manifest_url(folder: str) -> str:
    return storage.join(folder, MANIFEST_NAME)


def read_manifest(folder: str) -> Manifest:
    """The manifest of a version folder; a missing one means the build did not finish."""
    url = manifest_url(folder)
    try:
        raw = storage.read_bytes(url)
    except (FileNotFoundError, OSError) as error:
        raise ManifestError(f"{url}: cannot read it ({error}); the folder was not built or its "
                            "build did not finish") from error
    return Manifest.from_json(raw, where=url)


def write_manifest(folder: str, manifest: Manifest) -> None:
    """Write (atomically) the manifest of a finished version folder: the build's last write."""
    storage.write_bytes(manifest_url(folder), manifest.to_json())


def _shard_dict(shard: ShardEntry) -> dict[str, Any]:
    return {"name": shard.name, "num_samples": shard.num_samples, "sha256": shard.sha256,
            "bytes": shard.bytes, "num_queries": shard.num_queries}
