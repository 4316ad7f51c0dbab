"""Shard sets by name, in immutable versions behind a pointer moved last.

Every job names the data it reads the same way: `<dataset>/<split>` under one root
(`data.shards`, a local folder or s3:// prefix). On storage a set looks like

    <root>/<dataset>/<split>/CURRENT              {"version": "<id>", ...}  (the pointer)
    <root>/<dataset>/<split>/v-<id>/manifest.json
    <root>/<dataset>/<split>/v-<id>/shard-000000.tar ...

A build writes a new version folder and moves the pointer only after every shard and the
manifest are in place; nothing in a version folder changes after its manifest exists. A job
resolves the pointer once (`resolve`), records the version id, and reads only that folder, so a
rebuild during a run changes nothing the run reads.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import storage
from pipelines.manifest import Manifest, ManifestError, read_manifest

POINTER_NAME = "CURRENT"
VERSION_PREFIX = "v-"
_PART = r"[A-Za-z0-9_+-]+"
_NAME = re.compile(rf"^{_PART}/{_PART}$")
_VERSION = re.compile(r"^[0-9a-f]{8,64}$")


class ShardSetError(RuntimeError):
    """A shard set cannot be named, resolved or used; the message says what to fix."""


def parse_name(name: str) -> tuple[str, str]:
    """`<dataset>/<split>` -> (dataset, split); anything else (a URL, a path) is refused."""
    text = str(name).strip().strip("/")
    if not _NAME.match(text):
        raise ShardSetError(
            f"{name!r} is not a shard set name: name sets as <dataset>/<split> (e.g. "
            "reason_seg/val) and give their root as data.shards")
    dataset, split = text.split("/")
    return dataset, split


def set_folder(root: str, name: str) -> str:
    """`<root>/<dataset>/<split>`; a local root is made absolute (tasks run in other folders)."""
    dataset, split = parse_name(name)
    return storage.join(_absolute(root), dataset, split)


def _absolute(url: str) -> str:
    return str(url) if storage.is_s3(url) else str(Path(url).absolute())


def version_folder(root: str, name: str, version: str) -> str:
    return storage.join(set_folder(root, name), f"{VERSION_PREFIX}{version}")


@dataclass(frozen=True)
class ShardSet:
    """One resolved `<dataset>/<split>`: the exact version a job reads."""

    name: str
    version: str
    url: str  # the version folder
    manifest: Manifest

    @property
    def dataset(self) -> str:
        return self.manifest.dataset

    @property
    def split(self) -> str:
        return self.manifest.split

    def shard_url(self, shard_name: str) -> str:
        return storage.join(self.url, shard_name)

    def check_files(self) -> None:
        """Every shard the manifest lists exists with its size (one listing, no reads)."""
        present = {entry.name: entry.size for entry in storage.list_files(self.url)}
        missing = [s.name for s in self.manifest.shards if s.name not in present]
        if missing:
            raise ShardSetError(f"{self.url}: shards listed in the manifest are missing: "
                                f"{', '.join(missing[:10])}"
                                + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""))
        wrong = [f"{s.name} ({present[s.name]} bytes, manifest {s.bytes})"
                 for s in self.manifest.shards if present[s.name] != s.bytes]
        if wrong:
            raise ShardSetError(f"{self.url}: shards differ in size from the manifest: "
                                f"{', '.join(wrong[:10])}")

    def describe(self) -> dict[str, Any]:
        """What a run records about the data it was given (MLflow params/tags)."""
        return {"version": self.version, "url": self.url,
                "content_hash": self.manifest.content_hash,
                "num_samples": self.manifest.num_samples,
                "num_shards": len(self.manifest.shards)}


def resolve(root: str, name: str) -> ShardSet:
    """Read the pointer of `<root>/<name>` once and open the version it names."""
    folder = set_folder(root, name)
    pointer_url = storage.join(folder, POINTER_NAME)
    try:
        pointer = json.loads(storage.read_bytes(pointer_url))
        version = str(pointer["version"])
    except (FileNotFoundError, OSError) as error:
        raise ShardSetError(
            f"no shards at {folder} ({POINTER_NAME} missing: {error}); build them first with "
            "`read-build-shards` or fix data.shards and the set names") from error
    except (ValueError, KeyError, TypeError) as error:
        raise ShardSetError(f"{pointer_url} is not a version pointer: {error!r}") from error
    if not _VERSION.match(version):
        raise ShardSetError(f"{pointer_url} names an invalid version {version!r}")
    return open_version(storage.join(folder, f"{VERSION_PREFIX}{version}"), name=name)


def open_version(url: str, *, name: str | None = None) -> ShardSet:
    """A version folder given by URL (a pinned version recorded by an earlier run)."""
    url = _absolute(str(url).rstrip("/"))
    base = url.rsplit("/", 1)[-1]
    if not base.startswith(VERSION_PREFIX):
        raise ShardSetError(f"{url} is not a version folder (<set>/{VERSION_PREFIX}<id>)")
    try:
        manifest = read_manifest(url)
    except ManifestError as error:
        raise ShardSetError(str(error)) from error
    label = name or f"{manifest.dataset}/{manifest.split}"
    return ShardSet(label, base[len(VERSION_PREFIX):], url, manifest)


def resolve_all(root: str, names: list[str]) -> list[ShardSet]:
    return [resolve(root, name) for name in names]


def publish(root: str, name: str, version: str, manifest: Manifest) -> None:
    """Move the pointer of `<root>/<name>` to `version` (one atomic write, the build's last)."""
    if not _VERSION.match(version):
        raise ShardSetError(f"invalid version id {version!r}")
    payload = {"version": version, "content_hash": manifest.content_hash,
               "num_samples": manifest.num_samples, "published_unix": int(time.time())}
    storage.write_bytes(storage.join(set_folder(root, name), POINTER_NAME),
                        json.dumps(payload, indent=1, sort_keys=True).encode())


def current_version(root: str, name: str) -> str | None:
    """The version the pointer names now, or None when the set was never published."""
    try:
        return str(json.loads(storage.read_bytes(
            storage.join(set_folder(root, name), POINTER_NAME)))["version"])
    except (FileNotFoundError, OSError, ValueError, KeyError, TypeError):
        return None
