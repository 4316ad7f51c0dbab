"""Base weights: fetched once into a store with checksums, copied from there once per node.

The model section names where each node reads its base weights (`model.llava.path`, e.g.
/models/llava-1.5-7b-hf; `model.sam.checkpoint`; `model.tokenizer.path`). `read-fetch-weights`
puts them in a store (`weights.store`: a folder or an s3:// prefix) with a sha256 per file; a
worker that needs them copies them from the store into those node-local places, verifying each
file, under a file lock so that the workers of one node download once. A node that already
holds the current copy (its marker file names the stored digest) reads it as it is.

Store layout::

    <store>/manifest.json      {"format": "read-weights/1", "weights": {<name>: entry}}
    <store>/<name>/<file>      a folder weight (llava-hf layout; a flat folder)
    <store>/<name>             a single-file weight (SAM's .pth)

`<name>` is the last component of the model path that reads it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import socket
import tempfile
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines import storage

if TYPE_CHECKING:
    from pipelines.config import WeightsConfig
    from read_model.config import ReadConfig

MANIFEST_NAME = "manifest.json"
FORMAT = "read-weights/1"
MARKER_SUFFIX = ".read-weights.json"
LOCK_SUFFIX = ".read-weights.lock"
CHUNK_BYTES = 8 * 2**20
HUB_SCHEME = "hf://"
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt"]  # no .bin / .h5 / .msgpack copies


class WeightsError(RuntimeError):
    """Weights cannot be fetched or provisioned; the message names the path and what to do."""


@dataclass(frozen=True)
class StoredFile:
    """One file of a stored weight: its path inside the weight ("" for a single file)."""

    path: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class StoredWeight:
    """A manifest entry: what was fetched from where, file by file."""

    name: str
    kind: str  # "folder" or "file"
    source: str
    files: tuple[StoredFile, ...] = field(default_factory=tuple)

    def digest(self) -> str:
        """One hash over every file's name, sha256 and size: what a node copy is compared to."""
        text = "\n".join(f"{f.path}\t{f.sha256}\t{f.bytes}" for f in sorted(self.files,
                                                                        key=lambda f: f.path))
        return hashlib.sha256(f"{self.kind}\n{text}".encode()).hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "digest": self.digest(),
                "files": [{"path": f.path, "sha256": f.sha256, "bytes": f.bytes}
                          for f in self.files]}

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> StoredWeight:
        files = tuple(StoredFile(str(f["path"]), str(f["sha256"]), int(f["bytes"]))
                      for f in data.get("files", []))
        return cls(name, str(data["kind"]), str(data.get("source", "")), files)


@dataclass(frozen=True)
class NodeCopy:
    """What provisioning found or did on this node for one weight path."""

    key: str
    path: str
    node: str
    files: int
    bytes: int
    downloaded: bool


# ------------------------------------------------------------------------------ naming
def weight_paths(model: ReadConfig) -> dict[str, str]:
    """Every base-weight path of a model section, by config key (empty ones left out)."""
    paths = {"model.llava.path": model.llava.path, "model.sam.checkpoint": model.sam.checkpoint,
             "model.tokenizer.path": model.tokenizer.path}
    return {key: value for key, value in paths.items() if value}


def weight_name(path: str) -> str:
    name = Path(str(path).rstrip("/")).name
    if not name:
        raise WeightsError(f"{path!r} names no file or folder")
    return name


def stored_url(store: str, name: str, file: StoredFile) -> str:
    return storage.join(store, name, file.path) if file.path else storage.join(store, name)


# ------------------------------------------------------------------------------ the manifest
def read_manifest(store: str) -> dict[str, StoredWeight]:
    """The store's entries by name; an empty dict for a store nothing was fetched into."""
    url = storage.join(store, MANIFEST_NAME)
    try:
        raw = storage.read_bytes(url)
    except (FileNotFoundError, OSError):
        return {}
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise WeightsError(f"{url} is not a weights manifest: {error}") from error
    if data.get("format") != FORMAT:
        raise WeightsError(f"{url}: unknown format {data.get('format')!r} (expected {FORMAT})")
    return {name: StoredWeight.from_dict(name, entry)
            for name, entry in data.get("weights", {}).items()}


def write_manifest(store: str, weights: dict[str, StoredWeight]) -> None:
    document = {"format": FORMAT,
                "weights": {name: weights[name].to_dict() for name in sorted(weights)}}
    storage.write_bytes(storage.join(store, MANIFEST_NAME),
                        (json.dumps(document, indent=1, sort_keys=True) + "\n").encode())


# ------------------------------------------------------------------------------ copying
def copy_with_digest(source: str, destination: str) -> tuple[str, int]:
    """Stream one file from `source` to `destination` (local or s3://): (sha256, bytes)."""
    digest, size = hashlib.sha256(), 0
    with storage.open_input(source) as reader, storage.open_output(destination) as writer:
        while chunk := reader.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
            writer.write(chunk)
    return digest.hexdigest(), size


def _source_files(source: str) -> tuple[str, list[str]]:
    """("file", [""]) for a single file, ("folder", names) for a flat folder (local or s3)."""
    if storage.stat(source) is not None:
        return "file", [""]
    names = [entry.name for entry in storage.list_files(source)
             if storage.TMP_MARKER not in entry.name]
    if not names:
        raise WeightsError(f"{source} is neither a file nor a folder with files")
    return "folder", names


@contextlib.contextmanager
def _materialized(source: str, name: str) -> Iterator[str]:
    """A local or s3:// location holding the source's files (hub and https are downloaded)."""
    if source.startswith(HUB_SCHEME):
        from huggingface_hub import snapshot_download

        repo, _, revision = source[len(HUB_SCHEME):].partition("@")
        with tempfile.TemporaryDirectory(prefix="read-hub-") as tmp:
            yield snapshot_download(repo_id=repo, revision=revision or None,
                                    local_dir=str(Path(tmp) / name), allow_patterns=HUB_FILES)
        return
    if source.startswith(("https://", "http://")):
        with tempfile.TemporaryDirectory(prefix="read-url-") as tmp:
            local = Path(tmp) / name
            with urllib.request.urlopen(source, timeout=60) as response, open(local, "wb") as out:
                shutil.copyfileobj(response, out, CHUNK_BYTES)
            yield str(local)
        return
    yield source


def fetch_weight(source: str, store: str, name: str) -> StoredWeight:
    """Copy one weight (hub repo, URL, folder, file or s3://) into the store, file by file."""
    with _materialized(source, name) as located:
        kind, files = _source_files(located)
        stored = []
        for file in files:
            origin = storage.join(located, file) if file else located
            target = storage.join(store, name, file) if file else storage.join(store, name)
            sha, size = copy_with_digest(origin, target)
            stored.append(StoredFile(file, sha, size))
    return StoredWeight(name, kind, source, tuple(stored))


def is_stored(store: str, weight: StoredWeight) -> bool:
    """Every file of the entry is in the store with the size the manifest says."""
    for file in weight.files:
        entry = storage.stat(stored_url(store, weight.name, file))
        if entry is None or entry.size != file.bytes:
            return False
    return bool(weight.files)


def fetch(model: ReadConfig, settings: WeightsConfig, *, store: str | None = None,
          source_root: str | None = None, log: Callable[[str], None] = print) -> dict[str, str]:
    """Fetch every base weight the model section names into the store; -> {name: status}.

    A weight already stored from the same source, complete, is left alone ("up-to-date").
    `source_root` (a folder or s3:// prefix holding `<name>` entries, e.g. a mirror) replaces
    `settings.sources` for every weight.
    """
    store = store or settings.store
    if not store:
        raise WeightsError("no store: set weights.store (a folder or s3:// URL) or pass --to")
    storage.check_reachable(store)
    manifest = read_manifest(store)
    report: dict[str, str] = {}
    for key, path in weight_paths(model).items():
        name = weight_name(path)
        source = storage.join(source_root, name) if source_root else settings.sources.get(name)
        if not source:
            raise WeightsError(
                f"{key}={path}: no source for {name!r}; set weights.sources.{name} "
                f"(hf://<repo>@<revision>, https://..., a folder or s3://) or pass --source")
        current = manifest.get(name)
        if current is not None and current.source == source and is_stored(store, current):
            report[name] = "up-to-date"
            log(f"{name}: up-to-date in {store} ({current.total_bytes / 1e6:.1f} MB)")
            continue
        weight = fetch_weight(source, store, name)
        manifest[name] = weight
        write_manifest(store, manifest)  # after every weight: an interrupted fetch keeps the rest
        report[name] = "fetched"
        log(f"{name}: fetched from {source} into {store} ({len(weight.files)} files, "
            f"{weight.total_bytes / 1e6:.1f} MB)")
    if not report:
        log("the model section names no base weights (it is built from its config); "
            "nothing to fetch")
    return report


# ------------------------------------------------------------------------------ node side
def _marker(path: Path) -> Path:
    return path.parent / f".{path.name}{MARKER_SUFFIX}"


def _is_current(path: Path, weight: StoredWeight) -> bool:
    try:
        marker = json.loads(_marker(path).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("digest") != weight.digest():
        return False
    for file in weight.files:
        local = path / file.path if file.path else path
        if not local.is_file() or local.stat().st_size != file.bytes:
            return False
    return True


@contextlib.contextmanager
def _node_lock(path: Path) -> Iterator[None]:
    """One downloader per node and weight; the others wait, then find the copy current."""
    lock_path = path.parent / f".{path.name}{LOCK_SUFFIX}"
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(store: str, weight: StoredWeight, path: Path) -> None:
    """Copy and verify every file next to `path`, then swap the verified copy into place."""
    staging = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        if weight.kind == "folder":
            staging.mkdir()
        for file in weight.files:
            source = stored_url(store, weight.name, file)
            target = staging / file.path if file.path else staging
            sha, size = copy_with_digest(source, str(target))
            if sha != file.sha256 or size != file.bytes:
                raise WeightsError(
                    f"{source}: sha256 {sha[:12]}… ({size} bytes) does not match the manifest "
                    f"({file.sha256[:12]}…, {file.bytes} bytes); the store is damaged: run "
                    "read-fetch-weights again")
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        if path.exists():
            path.rename(old)
        staging.rename(path)
        _remove(old)
    finally:
        _remove(staging)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def ensure_local(key: str, path: str, store: str,
                 manifest: dict[str, StoredWeight] | None = None) -> NodeCopy:
    """Make `path` on this node a verified copy of the stored weight of the same name."""
    name = weight_name(path)
    manifest = read_manifest(store) if manifest is None else manifest
    weight = manifest.get(name)
    if weight is None:
        raise WeightsError(
            f"{key}={path}: {storage.join(store, MANIFEST_NAME)} has no weight {name!r}; run "
            f"`read-fetch-weights --config <preset> weights.store={store}` first")
    local = Path(path)
    try:
        local.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WeightsError(f"{key}={path}: cannot create {local.parent} on this node "
                           f"({error}); make it writable (the image creates /models)") from error
    downloaded = False
    if not _is_current(local, weight):
        with _node_lock(local):
            if not _is_current(local, weight):
                _download(store, weight, local)
                _marker(local).write_text(json.dumps(
                    {"digest": weight.digest(), "store": store, "source": weight.source}))
                downloaded = True
    return NodeCopy(key, path, socket.gethostname(), len(weight.files), weight.total_bytes,
                    downloaded)


def provision(model: ReadConfig, settings: WeightsConfig) -> list[NodeCopy]:
    """Every base-weight path of `model` present and readable on this node (copied if needed)."""
    paths = weight_paths(model)
    if settings.store and paths:
        manifest = read_manifest(settings.store)
        copies = [ensure_local(key, path, settings.store, manifest) for key, path in paths.items()]
    else:
        copies = []
    found = check_readable(paths)
    return copies or found


def check_readable(paths: dict[str, str]) -> list[NodeCopy]:
    """Open every file under each path; refuse a missing or unreadable one by its key."""
    node, problems, seen = socket.gethostname(), [], []
    for key, path in paths.items():
        local = Path(path)
        files = [p for p in sorted(local.rglob("*")) if p.is_file()] if local.is_dir() else [local]
        if not local.exists() or not files:
            problems.append(f"{key}={path}: not found on node {node}")
            continue
        try:
            for file in files:
                with open(file, "rb") as handle:
                    handle.read(1)
        except OSError as error:
            problems.append(f"{key}={path}: unreadable on node {node} ({error})")
            continue
        seen.append(NodeCopy(key, path, node, len(files), sum(f.stat().st_size for f in files),
                             False))
    if problems:
        raise WeightsError("; ".join(problems) + " (set weights.store to a store filled by "
                           "read-fetch-weights, or provide the files on every node)")
    return seen


def provision_model_dir(directory: str | Path, settings: WeightsConfig) -> list[NodeCopy]:
    """Provision what a registered (trainable) checkpoint directory's config needs."""
    from read_model.checkpoint import CONFIG_FILE, META_FILE
    from read_model.config import ReadConfig, from_dict, upgrade_legacy_model_dict

    directory = Path(directory)
    meta = json.loads((directory / META_FILE).read_text())
    if meta.get("kind") != "trainable":  # a merged checkpoint carries its own weights
        return []
    stored = upgrade_legacy_model_dict(json.loads((directory / CONFIG_FILE).read_text()))
    model = from_dict(ReadConfig, stored, "model")
    paths = {k: v for k, v in weight_paths(model).items() if k != "model.tokenizer.path"}
    if not paths:
        return []
    if settings.store:
        manifest = read_manifest(settings.store)
        return [ensure_local(key, path, settings.store, manifest) for key, path in paths.items()]
    return check_readable(paths)


def node_copies_summary(copies: list[NodeCopy]) -> dict[str, Any]:
    return {c.key: {"path": c.path, "node": c.node, "files": c.files, "bytes": c.bytes,
                    "downloaded": c.downloaded} for c in copies}
