"""Build WebDataset shards from upstream dataset folders with Ray (local or s3:// in and out).

    read-build-shards --dataset-root DIR|s3://... --out OUT|s3://... \
        [--datasets reason_seg refcoco ...] [--splits train val ...] [--shard-size-mb 64] \
        [--min-shards 32] [--max-quarantine-fraction 0.01] [--shared-root]

1. Cheap checks, before Ray starts: the root is readable, every requested split has its
   folders, REFER pickles hold plain data only (an opcode scan), instances.json and the image
   folder exist. A failure exits non-zero naming the file.
2. One plan task per (dataset, split) lists its records (ReasonSeg file stems; REFER image ids,
   the split's annotation files loaded once) with their sizes, sorted by key (keys carry
   zero-padded image ids, so they sort numerically), and cuts them into at least
   `--min-shards` shards of about `--shard-size-mb`.
3. One task per shard reads its records (validation included), encodes and writes the tar
   straight to storage and returns only its manifest entry and quarantine entries: no encoded
   bytes pass through the driver or the object store, so memory stays bounded at any scale.
4. Each (dataset, split) goes into a new version folder named by the build fingerprint
   (inputs, options, builder code); its manifest is written last, and only when every folder of
   the build succeeded are the pointers moved (`pipelines/shard_sets.py`). A dataset-level
   failure (unsafe or malformed pickle, unreadable instances.json, a missing folder, a root not
   visible on a node) or more quarantined records than `--max-quarantine-fraction` fails the
   whole build and publishes nothing.

A local `--dataset-root` is read by tasks pinned to this node (where the disk is); pass
`--shared-root` when every node mounts it at the same path, or give an s3:// root, to spread
the reads over the cluster. A re-run with the same fingerprint writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import math
import pickle
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataset_builders.sample import QuarantineEntry
from dataset_builders.sources import input_paths, reader_kind
from pipelines import storage
from pipelines.manifest import Manifest, ManifestError, ShardEntry, read_manifest, write_manifest
from pipelines.raw_inputs import RawInputs
from pipelines.shard_format import (
    SCHEMA_VERSION,
    SHARD_PATTERN,
    ShardFormatError,
    encode_sample,
    shard_name,
    tar_bytes,
)
from pipelines.shard_sets import (
    current_version,
    publish,
    version_folder,
)
from pipelines.submitted_job import refuse_relative_paths
from read_model.config import ConfigError

DEFAULT_SPLITS: dict[str, tuple[str, ...]] = {
    "reason_seg": ("train", "val", "test"),
    "refcoco": ("train", "val", "testA", "testB"),
    "refcoco+": ("train", "val", "testA", "testB"),
    "refcocog": ("train", "val", "test"),
    "fprefcoco": ("train", "val", "test"),
    "fprefcoco+": ("train", "val", "test"),
    "fprefcocog": ("train", "val", "test"),
    "R-refcoco": ("train", "val", "testA", "testB"),
    "R-refcoco+": ("train", "val", "testA", "testB"),
    "R-refcocog": ("train", "val", "test"),
    # semantic segmentation and VQA: upstream trains on their training sets only
    "ade20k": ("train",),
    "cocostuff": ("train",),
    "mapillary": ("train",),
    "paco_lvis": ("train",),
    "pascal_part": ("train",),
    "llava_instruct_150k": ("train",),
}
DEFAULT_SHARD_SIZE_MB = 64.0
DEFAULT_MIN_SHARDS = 32  # 2 x the loader parts of read-7b: 8 ranks x 2 loader workers
DEFAULT_MAX_QUARANTINE_FRACTION = 0.01
TASKS_IN_FLIGHT_PER_CPU = 2  # shard tasks queued per cluster CPU: bounds results held at once
TAR_BLOCK = 512
MASK_BYTES_ESTIMATE = 4096  # a lossless PNG of 1-3 flat masks, for planning only
VERSION_CHARS = 16
_CODE_PACKAGES = ("dataset_builders",)
_CODE_FILES = ("pipelines/shard_format.py", "pipelines/build_shards.py",
               "pipelines/raw_inputs.py")
_PROJECT_ROOT = Path(__file__).resolve().parents[1]
REASON_SEG_FOLDER = "reason_seg/ReasonSeg"
# Semantic-segmentation, part and VQA datasets are read whole by their reader, in one shard
# task: one planned record standing for the split (partitioning them is future work).
WHOLE_SPLIT = "*"
WHOLE_SPLIT_SIZE = 1
REFER_FOLDER = "refer_seg"


class BuildError(RuntimeError):
    """The build cannot produce a complete dataset; nothing was published. Names the cause."""

    def __init__(self, message: str, *, before_start: bool = False) -> None:
        super().__init__(message)
        self.before_start = before_start  # found by the cheap checks, before Ray started


@dataclass(frozen=True)
class BuildOptions:
    shard_size_mb: float = DEFAULT_SHARD_SIZE_MB
    min_shards: int = DEFAULT_MIN_SHARDS
    max_quarantine_fraction: float = DEFAULT_MAX_QUARANTINE_FRACTION
    shared_root: bool = False  # a local root mounted at the same path on every node

    @property
    def shard_size_bytes(self) -> int:
        return int(self.shard_size_mb * 1024 * 1024)


@dataclass
class FolderReport:
    """What one (dataset, split) build did; printed by the CLI and returned to callers."""

    dataset: str
    split: str
    url: str  # the version folder
    version: str
    status: str  # "built" or "up-to-date"
    num_samples: int = 0
    num_queries: int = 0
    num_shards: int = 0
    shards_written: int = 0
    bytes: int = 0
    seconds: float = 0.0  # wall time of the whole build call (folders are built together)
    quarantine: list[QuarantineEntry] = field(default_factory=list)
    content_hash: str = ""

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.split}"

    def summary(self) -> str:
        reasons = Counter(entry.reason.split(":")[0] for entry in self.quarantine)
        text = (f"{self.name}: {self.status} (version {self.version}); {self.num_samples} "
                f"samples, {self.num_queries} queries, {self.num_shards} shards "
                f"({self.shards_written} written), {self.bytes / 1e6:.2f} MB, "
                f"{len(self.quarantine)} quarantined")
        for reason, count in sorted(reasons.items()):
            text += f"\n    quarantined {count}: {reason}"
        return text

    @classmethod
    def from_manifest(cls, url: str, version: str, status: str, manifest: Manifest,
                      written: int = 0) -> FolderReport:
        return cls(manifest.dataset, manifest.split, url, version, status, manifest.num_samples,
                   manifest.num_queries, len(manifest.shards), written, manifest.num_bytes, 0.0,
                   list(manifest.quarantine), manifest.content_hash)


# ---------------------------------------------------------------- inputs (cheap, driver)

def input_folders(dataset: str, split: str) -> list[str]:
    """The upstream folders (or files) a (dataset, split) is read from, relative to the root,
    the defining one first."""
    kind = reader_kind(dataset)
    if kind == "reason_seg":
        return [f"{REASON_SEG_FOLDER}/{part}" for part in split.split("_") if part]
    if kind == "refer":
        images = "saiapr_tc-12" if dataset == "refclef" else "mscoco/images/train2014"
        return [f"{REFER_FOLDER}/{dataset}", f"{REFER_FOLDER}/images/{images}"]
    return [str(path) for path in input_paths(".", dataset, split)]


def refs_file(raw: RawInputs, dataset: str) -> str:
    """The refs pickle upstream opens for `dataset` (relative path), as `refs_path` picks it."""
    from dataset_builders.refer import DEFAULT_SPLIT_BY

    folder = f"{REFER_FOLDER}/{dataset}"
    present = sorted(n for n in raw.listing(folder) if n.startswith("refs(") and n.endswith(").p"))
    for split_by in DEFAULT_SPLIT_BY.get(dataset, ()):
        if f"refs({split_by}).p" in present:
            return f"{folder}/refs({split_by}).p"
    if present:
        return f"{folder}/{present[0]}"
    raise BuildError(f"no refs(<splitBy>).p in {raw.url(folder)}; tried "
                     f"{list(DEFAULT_SPLIT_BY.get(dataset, ()))}", before_start=True)


def check_inputs(raw: RawInputs, dataset: str, split: str, *, explicit: bool) -> str | None:
    """None when the (dataset, split) can be read; a reason to skip a default split whose folder
    is absent. Dataset-level problems raise `BuildError` naming the file."""
    folders = input_folders(dataset, split)
    if dataset == "reason_seg":
        absent = [f for f in folders if not raw.is_dir(f)]
        if absent and not explicit:
            return f"no input folder {raw.url(absent[0])}"
        if absent:
            raise BuildError(f"ReasonSeg split folder not found: {raw.url(absent[0])}",
                             before_start=True)
        return None
    if reader_kind(dataset) != "refer":  # read whole by its own reader (WHOLE_SPLIT_KINDS)
        if raw.is_s3:
            raise BuildError(f"{dataset} is read from a local --dataset-root only (an s3:// "
                             "root is supported for ReasonSeg and REFER-format datasets)",
                             before_start=True)
        present = raw.is_dir(folders[0]) or raw.is_file(folders[0])
        if not present and not explicit:
            return f"no input {raw.url(folders[0])}"
        if not present:
            raise BuildError(f"{dataset} input not found: {raw.url(folders[0])}",
                             before_start=True)
        return None
    if not raw.is_dir(folders[0]):
        raise BuildError(f"REFER dataset folder not found: {raw.url(folders[0])}",
                         before_start=True)
    refs = refs_file(raw, dataset)
    _check_pickle(raw, refs)
    instances = f"{folders[0]}/instances.json"
    size = raw.listing(folders[0]).get("instances.json", 0)
    if not raw.is_file(instances) or size == 0:
        raise BuildError(f"instances file not found or empty: {raw.url(instances)}",
                         before_start=True)
    if not raw.is_dir(folders[1]):
        raise BuildError(f"image folder not found: {raw.url(folders[1])}", before_start=True)
    return None


def _check_pickle(raw: RawInputs, relative: str) -> None:
    from dataset_builders.safe_pickle import check_plain

    local = raw.stage_cached([relative]) / relative
    try:
        check_plain(local)
    except pickle.UnpicklingError as error:  # UnsafePickleError included
        raise BuildError(str(error).replace(str(local), raw.url(relative)),
                         before_start=True) from error


def code_fingerprint() -> str:
    """sha256 of the builder code (readers, validation, shard format)."""
    digest = hashlib.sha256()
    files = [_PROJECT_ROOT / f for f in _CODE_FILES]
    for package in _CODE_PACKAGES:
        files += sorted((_PROJECT_ROOT / package).rglob("*.py"))
        files += sorted((_PROJECT_ROOT / package).rglob("*.txt"))  # bundled class lists
    for path in sorted(set(files)):
        if path.is_file():
            digest.update(str(path.relative_to(_PROJECT_ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def build_fingerprint(raw: RawInputs, dataset: str, split: str, options: BuildOptions) -> str:
    payload = {
        "schema": SCHEMA_VERSION, "dataset": dataset, "split": split,
        "shard_size_bytes": options.shard_size_bytes, "min_shards": options.min_shards,
        "code": code_fingerprint(), "inputs": raw.fingerprint(input_folders(dataset, split)),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- planning (Ray task)

def _tar_size(*member_sizes: int) -> int:
    return sum(TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK for size in member_sizes)


@functools.lru_cache(maxsize=4)
def _refer_index(root: str, dataset: str, split: str, split_by: str, stamp: str) -> Any:
    """A split's REFER index, loaded once per process (`stamp` changes when the files do)."""
    from dataset_builders.refer import load_refer_index

    return load_refer_index(root, dataset, split, split_by)


def _refer_inputs(raw: RawInputs, dataset: str, split: str, refs: str) -> Any:
    instances = f"{Path(refs).parent}/instances.json"
    local = raw.stage_cached([refs, instances])
    stamp = "|".join(f"{p.stat().st_size}:{p.stat().st_mtime_ns}"
                     for p in (local / refs, local / instances))
    split_by = Path(refs).name[len("refs("):-len(").p")]
    return _refer_index(str(local), dataset, split, split_by, stamp)


def _visible_here(raw: RawInputs, dataset: str, split: str) -> None:
    """A local root must be on this node; say so loudly instead of quarantining everything."""
    if raw.is_s3:
        return
    absent = [f for f in input_folders(dataset, split)[:1]
              if not (raw.is_dir(f) or raw.is_file(f))]
    if absent:
        raise FileNotFoundError(
            f"{raw.url(absent[0])} is not visible on node {socket.gethostname()} "
            f"({_node_ip()}); a local --dataset-root must be read where it is (drop "
            "--shared-root) or given as an s3:// root")


def _node_ip() -> str:
    with contextlib.suppress(Exception):
        import ray

        return ray.util.get_node_ip_address()
    return "?"


def plan_folder(root: str, dataset: str, split: str, refs: str) -> dict[str, Any]:
    """Ray task: the folder's records [(record id, estimated tar bytes)] in key order."""
    from dataset_builders.sample import make_key

    raw = RawInputs(root)
    try:
        _visible_here(raw, dataset, split)
        if dataset == "reason_seg":
            records = []
            for folder in input_folders(dataset, split):
                part = folder.rsplit("/", 1)[1]
                files = raw.listing(folder)
                stems = {Path(n).stem for n in files if n.endswith((".jpg", ".json"))}
                for stem in stems:
                    size = _tar_size(files.get(f"{stem}.jpg", 0), files.get(f"{stem}.json", 0),
                                     MASK_BYTES_ESTIMATE)
                    records.append((make_key(dataset, part, stem), f"{part}/{stem}", size))
            records.sort()
            return {"records": [[r, s] for _, r, s in records], "quarantine": [], "fatal": None}
        if reader_kind(dataset) != "refer":
            # The semantic-segmentation, part and VQA readers take a whole split: one record.
            return {"records": [[WHOLE_SPLIT, WHOLE_SPLIT_SIZE]], "quarantine": [],
                    "fatal": None}
        index = _refer_inputs(raw, dataset, split, refs)
        images = raw.listing(input_folders(dataset, split)[1])
        records = [[image_id, _tar_size(images.get(index.file_name(image_id) or "", 0),
                                        2048, MASK_BYTES_ESTIMATE)]
                   for image_id in index.image_ids]  # ids ascend: zero-padded keys ascend
        quarantine = [[q.source, q.record_id, q.reason] for q in index.quarantine]
        return {"records": records, "quarantine": quarantine, "fatal": None}
    except Exception as error:  # dataset level: reported by the driver, which stops the build
        return {"records": [], "quarantine": [], "fatal": f"{type(error).__name__}: {error}"}


def pack(sizes: Sequence[int], shard_size_bytes: int, min_shards: int) -> list[tuple[int, int]]:
    """[start, end) index ranges of contiguous shards: at least `min_shards` (when there are
    that many records), each about `shard_size_bytes`, balanced by estimated size."""
    count = len(sizes)
    if count == 0:
        return []
    total = sum(sizes)
    shards = min(count, max(int(min_shards), math.ceil(total / max(shard_size_bytes, 1)), 1))
    bounds, start, used = [], 0, 0
    for index, size in enumerate(sizes):
        used += size
        left_records, left_shards = count - index - 1, shards - len(bounds) - 1
        full = used >= total * (len(bounds) + 1) / shards
        if left_shards > 0 and (full or left_records == left_shards):
            bounds.append((start, index + 1))
            start = index + 1
    bounds.append((start, count))
    return [b for b in bounds if b[1] > b[0]]


# ---------------------------------------------------------------- writing (Ray task)

def _shard_items(raw: RawInputs, dataset: str, split: str, refs: str, records: list[Any],
                 scratch: Path) -> tuple[Iterator[Any], list[Path]]:
    """The reader items of a shard's records, and the local roots they were read from."""
    if dataset == "reason_seg":
        from dataset_builders.reason_seg import read_record

        relatives = [f"{REASON_SEG_FOLDER}/{record}.{ext}" for record in records
                     for ext in ("jpg", "json")]
        local = raw.stage(relatives, scratch)
        pairs = [str(record).split("/", 1) for record in records]
        return (read_record(local / REASON_SEG_FOLDER / part, stem, part)
                for part, stem in pairs), [local]
    if reader_kind(dataset) != "refer":
        from dataset_builders.sources import iter_dataset

        local = Path(raw.root)  # a local root (check_inputs refuses s3:// for these kinds)
        return iter(iter_dataset(local, dataset, split)), [local]
    from dataset_builders.refer import iter_refer_images

    index = _refer_inputs(raw, dataset, split, refs)
    images = input_folders(dataset, split)[1]
    names = [index.file_name(int(i)) for i in records]
    local = raw.stage([f"{images}/{n}" for n in names if n], scratch)
    items = iter_refer_images(index, [int(i) for i in records], local / images)
    return items, [local, index.ref_file.parents[2]]


def write_shard(root: str, dataset: str, split: str, refs: str, folder: str, name: str,
                records: list[Any]) -> dict[str, Any]:
    """Ray task: read, validate and encode the records of one shard; write its tar.

    Returns the manifest entry (None when every record was quarantined), the quarantine
    entries, and a dataset-level failure as `fatal` (the build stops on it).
    """
    from dataset_builders.sample import QuarantineEntry as Quarantined

    raw = RawInputs(root)
    members, quarantine = [], []
    try:
        _visible_here(raw, dataset, split)
        with tempfile.TemporaryDirectory(prefix="read-build-") as scratch:
            items, local_roots = _shard_items(raw, dataset, split, refs, records, Path(scratch))
            for item in items:
                if isinstance(item, Quarantined):
                    quarantine.append([raw.external(item.source, local_roots), item.record_id,
                                       raw.external(item.reason, local_roots)])
                    continue
                item.source = {k: raw.external(v, local_roots) for k, v in item.source.items()}
                try:
                    encoded = encode_sample(item)
                except ShardFormatError as error:
                    quarantine.append([str(item.source.get("image", "")), item.key,
                                       f"cannot encode: {error}"])
                    continue
                members.append((encoded, item.num_queries))
    except Exception as error:  # dataset level (an annotation file, the root itself)
        return {"entry": None, "quarantine": quarantine, "fatal": f"{type(error).__name__}: {error}"}
    if not members:
        return {"entry": None, "quarantine": quarantine, "fatal": None}
    members.sort(key=lambda m: m[0]["__key__"])
    data = tar_bytes([m for m, _ in members])
    storage.write_bytes(storage.join(folder, name), data)
    entry = {"name": name, "num_samples": len(members),
             "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
             "num_queries": sum(q for _, q in members)}
    return {"entry": entry, "quarantine": quarantine, "fatal": None}


# ---------------------------------------------------------------- driver

@dataclass
class _Folder:
    """One (dataset, split) to build."""

    dataset: str
    split: str
    fingerprint: str
    refs: str = ""
    explicit: bool = False
    plan: dict[str, Any] = field(default_factory=dict)
    entries: list[ShardEntry] = field(default_factory=list)
    quarantine: list[QuarantineEntry] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.split}"

    @property
    def version(self) -> str:
        return self.fingerprint[:VERSION_CHARS]


def _placement(raw: RawInputs, options: BuildOptions) -> dict[str, Any]:
    """Where read tasks may run: anywhere for s3:// or a shared disk, else on this node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if raw.is_s3 or options.shared_root:
        remote: dict[str, Any] = {"scheduling_strategy": "SPREAD"}
    else:
        node = ray.get_runtime_context().get_node_id()
        remote = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}
    if raw.is_s3 or storage.is_s3(raw.root):
        remote["runtime_env"] = {"env_vars": storage.aws_environment()}
    return remote


def _remote_env(out: str) -> dict[str, Any]:
    """S3 output needs the AWS variables in workers started before they were set."""
    return {"env_vars": storage.aws_environment()} if storage.is_s3(out) else {}


def _run_tasks(function: Any, calls: list[tuple[Any, ...]], remote: dict[str, Any]
               ) -> list[dict[str, Any]]:
    """Run `function(*call)` as Ray tasks, at most TASKS_IN_FLIGHT_PER_CPU per CPU at a time."""
    import ray

    task = ray.remote(function).options(**remote)
    window = max(2, int(ray.cluster_resources().get("CPU", 1)) * TASKS_IN_FLIGHT_PER_CPU)
    results: dict[int, dict[str, Any]] = {}
    pending: dict[Any, int] = {}
    for index, call in enumerate(calls):
        if len(pending) >= window:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                results[pending.pop(ref)] = ray.get(ref)
        pending[task.remote(*call)] = index
    for ref, index in pending.items():
        results[index] = ray.get(ref)
    return [results[i] for i in range(len(calls))]


def _fatal_message(folders: list[_Folder]) -> str:
    lines = [f"{f.name}: {reason}" for f in folders for reason in sorted(set(f.fatal))[:5]]
    return "dataset-level failure, nothing was published:\n  " + "\n  ".join(lines)


def build_shards(dataset_root: str, out: str, *, datasets: Sequence[str] = ("reason_seg",),
                 splits: Sequence[str] | None = None, sets: Sequence[str] | None = None,
                 options: BuildOptions | None = None) -> list[FolderReport]:
    """Build every requested (dataset, split) into new versions; publish all or nothing.

    Uses the running Ray (or starts a local one) only after the cheap checks pass. `splits`
    defaults to each dataset's usual splits, of which absent ones are skipped with a message;
    requested splits (or `sets`, explicit `<dataset>/<split>` names replacing both) must
    exist. Raises `BuildError` for anything that would leave a partial dataset.
    """
    options = options or BuildOptions()
    started = time.perf_counter()
    raw = RawInputs(dataset_root)
    try:
        readable = raw.is_dir()
    except OSError as error:
        raise BuildError(f"dataset root {dataset_root} is unreadable: {error}",
                         before_start=True) from error
    if not readable:
        raise BuildError(f"dataset root {dataset_root} is not a readable folder",
                         before_start=True)
    try:
        storage.check_reachable(out)
    except storage.StorageError as error:
        raise BuildError(f"--out: {error}", before_start=True) from error
    explicit = splits is not None or sets is not None
    if sets is not None:
        wanted = [tuple(name.split("/", 1)) for name in sets]
    else:
        wanted = [(dataset, split) for dataset in datasets
                  for split in (splits or DEFAULT_SPLITS.get(dataset, ("train", "val")))]
    folders: list[_Folder] = []
    for dataset, split in wanted:
        skip = check_inputs(raw, dataset, split, explicit=explicit)
        if skip:
            print(f"{dataset}/{split}: {skip}, skipped")
            continue
        refs = "" if reader_kind(dataset) != "refer" else refs_file(raw, dataset)
        folders.append(_Folder(dataset, split, build_fingerprint(raw, dataset, split, options),
                               refs, explicit=explicit))
    reports: dict[str, FolderReport] = {}
    todo = []
    for folder in folders:
        url = version_folder(out, folder.name, folder.version)
        try:
            manifest = read_manifest(url)
            if _files_present(url, manifest):
                reports[folder.name] = FolderReport.from_manifest(url, folder.version,
                                                                  "up-to-date", manifest)
                continue
        except ManifestError:
            pass
        todo.append(folder)
    if todo:
        reports.update(_build(raw, out, todo, options))
    for folder in folders:  # every folder is complete: move the pointers, last
        report = reports.get(folder.name)
        if report is None:
            continue
        if current_version(out, folder.name) != folder.version:
            publish(out, folder.name, folder.version, read_manifest(report.url))
    elapsed = time.perf_counter() - started
    for report in reports.values():
        report.seconds = elapsed
    return [reports[f.name] for f in folders if f.name in reports]


def _files_present(url: str, manifest: Manifest) -> bool:
    present = {entry.name: entry.size for entry in storage.list_files(url)}
    return all(present.get(s.name) == s.bytes for s in manifest.shards)


def _build(raw: RawInputs, out: str, folders: list[_Folder],
           options: BuildOptions) -> dict[str, FolderReport]:
    from pipelines.ray_runtime import ensure_ray

    ensure_ray(log_to_driver=False)
    remote = _placement(raw, options)
    plans = _run_tasks(plan_folder, [(raw.root, f.dataset, f.split, f.refs) for f in folders],
                       remote)
    for folder, plan in zip(folders, plans, strict=True):
        folder.plan = plan
        if plan["fatal"]:
            folder.fatal.append(plan["fatal"])
        folder.quarantine += [QuarantineEntry(*q) for q in plan["quarantine"]]
    for folder in folders:
        if not folder.plan["records"] and not folder.quarantine:
            source = folder.refs or input_folders(folder.dataset, folder.split)[0]
            if folder.explicit:
                folder.fatal.append(f"no records of split {folder.split!r} in {raw.url(source)}")
            else:
                print(f"{folder.name}: no records in {raw.url(source)}, skipped")
    if any(f.fatal for f in folders):
        raise BuildError(_fatal_message(folders))
    folders = [f for f in folders if f.plan["records"] or f.quarantine]
    calls, owners = [], []
    for folder in folders:
        records = folder.plan["records"]
        url = version_folder(out, folder.name, folder.version)
        for index, (start, end) in enumerate(pack([s for _, s in records],
                                                  options.shard_size_bytes, options.min_shards)):
            calls.append((raw.root, folder.dataset, folder.split, folder.refs, url,
                          shard_name(index), [r for r, _ in records[start:end]]))
            owners.append(folder)
    write_remote = {**remote}
    env = {**remote.get("runtime_env", {}).get("env_vars", {}),
           **_remote_env(out).get("env_vars", {})}
    if env:
        write_remote["runtime_env"] = {"env_vars": env}
    for folder, result in zip(owners, _run_tasks(write_shard, calls, write_remote), strict=True):
        if result["fatal"]:
            folder.fatal.append(result["fatal"])
        folder.quarantine += [QuarantineEntry(*q) for q in result["quarantine"]]
        if result["entry"]:
            folder.entries.append(ShardEntry(**result["entry"]))
    if any(f.fatal for f in folders):
        raise BuildError(_fatal_message(folders))
    for folder in folders:
        _check_quarantine(folder, options.max_quarantine_fraction)
    reports = {}
    for folder in folders:
        url = version_folder(out, folder.name, folder.version)
        manifest = Manifest(folder.dataset, folder.split,
                            tuple(sorted(folder.entries, key=lambda e: e.name)),
                            tuple(folder.quarantine), folder.fingerprint,
                            options.shard_size_bytes, options.min_shards)
        _remove_strays(url, manifest)
        write_manifest(url, manifest)
        reports[folder.name] = FolderReport.from_manifest(url, folder.version, "built", manifest,
                                                          written=len(manifest.shards))
    return reports


def _check_quarantine(folder: _Folder, max_fraction: float) -> None:
    samples = sum(e.num_samples for e in folder.entries)
    quarantined = len(folder.quarantine)
    if samples == 0:
        raise BuildError(f"{folder.name}: no sample survived validation "
                         f"({quarantined} quarantined); nothing was published"
                         + _reason_lines(folder.quarantine))
    fraction = quarantined / (samples + quarantined)
    if fraction > max_fraction:
        raise BuildError(
            f"{folder.name}: {quarantined} of {samples + quarantined} records quarantined "
            f"({fraction:.1%} > --max-quarantine-fraction {max_fraction:g}); nothing was "
            "published" + _reason_lines(folder.quarantine))


def _reason_lines(quarantine: Sequence[QuarantineEntry]) -> str:
    counts = Counter(q.reason.split(":")[0] for q in quarantine)
    return "".join(f"\n    quarantined {n}: {reason}" for reason, n in counts.most_common(10))


def _remove_strays(url: str, manifest: Manifest) -> None:
    """Shards and temp files of an interrupted attempt at this same version."""
    keep = {s.name for s in manifest.shards}
    for entry in storage.list_files(url):
        ours = SHARD_PATTERN.match(entry.name) or storage.TMP_MARKER in entry.name
        if ours and entry.name not in keep:
            storage.delete(storage.join(url, entry.name))


def write_samples(samples: Sequence[Any], folder: str, *, dataset: str, split: str,
                  quarantine: Sequence[QuarantineEntry] = (),
                  shard_size_mb: float = DEFAULT_SHARD_SIZE_MB,
                  min_shards: int = 1) -> FolderReport:
    """Write canonical samples as a published shard set in this process, without Ray.

    `folder` is the set folder (`<root>/<dataset>/<split>`); the version is named by the
    content hash. The same packing, tars and manifest as `build_shards`; for tests and tools
    that already hold `Sample`s.
    """
    encoded = sorted(((encode_sample(s), s.num_queries) for s in samples),
                     key=lambda m: m[0]["__key__"])
    sizes = [_tar_size(*(len(m[k]) for k in ("jpg", "json", "masks.png"))) for m, _ in encoded]
    shard_size_bytes = int(shard_size_mb * 1024 * 1024)
    tars = []
    for index, (start, end) in enumerate(pack(sizes, shard_size_bytes, min_shards)):
        data = tar_bytes([m for m, _ in encoded[start:end]])
        tars.append((ShardEntry(shard_name(index), end - start, hashlib.sha256(data).hexdigest(),
                                len(data), sum(q for _, q in encoded[start:end])), data))
    manifest = Manifest(dataset, split, tuple(e for e, _ in tars), tuple(quarantine), "",
                        shard_size_bytes, min_shards)
    version = manifest.content_hash[:VERSION_CHARS]
    name = f"{dataset}/{split}"
    if not folder.rstrip("/").endswith(f"/{name}"):
        raise ValueError(f"{folder} must end in /{name}")
    root = folder.rstrip("/").rsplit("/", 2)[0]
    url = version_folder(root, name, version)
    for entry, data in tars:
        storage.write_bytes(storage.join(url, entry.name), data)
    write_manifest(url, manifest)
    publish(root, name, version, manifest)
    return FolderReport.from_manifest(url, version, "built", manifest, written=len(tars))


RESUME_HINT = ("run the same command again: nothing was published, and folders already built "
               "with the same fingerprint are not written again")


def main(argv: Sequence[str] | None = None) -> int:
    """0 built and published, 1 failed, 2 could not start, 130 interrupted; from the command
    line the build runs in a watched child process (pipelines/outcome.py)."""
    from pipelines import outcome

    def direct() -> int:
        return outcome.run_command("read-build-shards", lambda: _main(argv), resume=RESUME_HINT)

    if argv is not None:
        return direct()
    _parser().parse_args(sys.argv[1:])  # flag errors and --help here, before a child starts
    return outcome.supervise("read-build-shards", "pipelines.build_shards", sys.argv[1:],
                             resume=RESUME_HINT, direct=direct)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset-root", required=True,
                        help="folder or s3:// prefix with the upstream layout")
    parser.add_argument("--out", required=True, help="local folder or s3://bucket/prefix")
    parser.add_argument("--datasets", nargs="+", default=["reason_seg"])
    parser.add_argument("--splits", nargs="+", default=None)
    parser.add_argument("--shard-size-mb", type=float, default=DEFAULT_SHARD_SIZE_MB)
    parser.add_argument("--min-shards", type=int, default=DEFAULT_MIN_SHARDS,
                        help="shards per split at least (>= 2 x ranks x loader workers)")
    parser.add_argument("--max-quarantine-fraction", type=float,
                        default=DEFAULT_MAX_QUARANTINE_FRACTION,
                        help="fail the build when more records than this are quarantined")
    parser.add_argument("--shared-root", action="store_true",
                        help="the local dataset root is mounted at the same path on every node")
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        refuse_relative_paths({"--dataset-root": args.dataset_root, "--out": args.out})
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    options = BuildOptions(args.shard_size_mb, args.min_shards, args.max_quarantine_fraction,
                           args.shared_root)
    started = time.perf_counter()
    try:
        reports = build_shards(args.dataset_root, args.out, datasets=args.datasets,
                               splits=args.splits, options=options)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if error.before_start else 1
    if not reports:
        print("error: nothing to build: no requested dataset/split has input folders under "
              f"{args.dataset_root}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    from dataset_builders.published_counts import published_comparison

    for report in reports:
        print(report.summary())
        print("    " + published_comparison(report.dataset, report.split, report.num_samples,
                                            report.num_queries))
    total = sum(r.num_samples for r in reports)
    megabytes = sum(r.bytes for r in reports) / 1e6
    print(f"total: {total} samples, {sum(len(r.quarantine) for r in reports)} quarantined, "
          f"{sum(r.num_shards for r in reports)} shards, {megabytes:.2f} MB in {elapsed:.1f} s "
          f"({total / max(elapsed, 1e-9):.1f} samples/s, {megabytes / max(elapsed, 1e-9):.2f} MB/s)")
    return 0


if __name__ == "__main__":
    # Ray tasks must refer to this module by its import name, not as __main__.
    from pipelines.build_shards import main as _main

    raise SystemExit(_main())
