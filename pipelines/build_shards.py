"""Build WebDataset shards from upstream dataset folders with Ray Data (local or s3:// output).

    read-build-shards --dataset-root DIR --out OUT \
        [--datasets reason_seg refcoco ...] [--splits train val ...] [--shard-size-mb 64]

For each (dataset, split): Ray tasks run the `dataset_builders` reader (validation included) and
encode every sample into its WebDataset members; the driver sorts the keys and packs them into
shards of about `--shard-size-mb`; Ray tasks write `OUT/<dataset>/<split>/shard-NNNNNN.tar`;
`manifest.json` is written last (docs/architecture.md §2).

Atomic and idempotent: the old manifest is removed before any shard is touched and the new one
is written only after every shard is in place, so a crash leaves no manifest; the manifest keeps
a fingerprint of the inputs, options and builder code, and a re-run with the same fingerprint
writes nothing; shards whose bytes did not change are not rewritten; stray shards and temp files
of an interrupted build are deleted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines import storage
from pipelines.ray_runtime import ensure_ray
from pipelines.shard_format import (
    IMAGE_MEMBER,
    MANIFEST_NAME,
    MASKS_MEMBER,
    META_MEMBER,
    SCHEMA_VERSION,
    SHARD_PATTERN,
    ShardFormatError,
    content_hash,
    encode_sample,
    shard_name,
    tar_bytes,
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
TAR_BLOCK = 512
READ_TASKS_PER_CPU = 2  # reader tasks per cluster CPU: enough to balance uneven record costs
# Files whose code decides shard contents: a change to any of them changes the fingerprint.
_CODE_PACKAGES = ("dataset_builders",)
_CODE_FILES = ("pipelines/shard_format.py", "pipelines/build_shards.py")
_PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Columns of the encoded-records dataset (dots avoided in Ray column names).
_MEMBER_COLUMNS = {IMAGE_MEMBER: "jpg", META_MEMBER: "json", MASKS_MEMBER: "masks_png"}


@dataclass
class FolderReport:
    """What one (dataset, split) build did; printed by the CLI and returned to callers."""

    dataset: str
    split: str
    url: str
    status: str  # "built" or "up-to-date"
    num_samples: int = 0
    num_queries: int = 0
    num_shards: int = 0
    shards_written: int = 0
    bytes: int = 0
    seconds: float = 0.0  # wall time of the whole build call (folders are built together)
    quarantine: list[dict[str, str]] = field(default_factory=list)
    content_hash: str = ""

    def summary(self) -> str:
        reasons = Counter(entry["reason"].split(":")[0] for entry in self.quarantine)
        text = (f"{self.dataset}/{self.split}: {self.status}; {self.num_samples} samples, "
                f"{self.num_queries} queries, {self.num_shards} shards "
                f"({self.shards_written} written), {self.bytes / 1e6:.2f} MB, "
                f"{len(self.quarantine)} quarantined")
        for reason, count in sorted(reasons.items()):
            text += f"\n    quarantined {count}: {reason}"
        return text


# ---------------------------------------------------------------- reading (runs in Ray tasks)

def plan_read_tasks(dataset_root: str, dataset: str, split: str,
                    num_parts: int) -> list[dict[str, Any]]:
    """Independent reader tasks for one (dataset, split).

    ReasonSeg is one record per file pair, so its stems are dealt round-robin to `num_parts`
    tasks. A REFER split shares one pickle and one instances.json, so it is one task.
    """
    base = {"dataset_root": str(dataset_root), "dataset": dataset, "split": split}
    if dataset != "reason_seg":
        return [{**base, "part": 0, "records": []}]
    from dataset_builders.reason_seg import split_folders

    records = []
    for part_split, folder in split_folders(dataset_root, split):
        if not folder.is_dir():
            raise FileNotFoundError(f"ReasonSeg split folder not found: {folder}")
        stems = sorted({p.stem for p in folder.glob("*.jpg")} | {p.stem for p in folder.glob("*.json")})
        records += [[str(folder), stem, part_split] for stem in stems]
    parts = max(1, min(num_parts, len(records)))
    return [{**base, "part": i, "records": records[i::parts]} for i in range(parts)]


def _reader(task: dict[str, Any]) -> Iterator[Any]:
    """The dataset_builders reader of one task: Sample | QuarantineEntry items."""
    if task["dataset"] == "reason_seg":
        from dataset_builders.reason_seg import read_record

        return (read_record(Path(folder), stem, split) for folder, stem, split in task["records"])
    from dataset_builders.sources import iter_dataset

    return iter(iter_dataset(task["dataset_root"], task["dataset"], task["split"]))


_ROW_DEFAULTS: dict[str, Any] = {  # one fixed column order: Ray blocks must share a schema
    "folder_id": 0, "kind": "", "ordinal": 0, "key": "", "jpg": b"", "json": b"",
    "masks_png": b"", "nbytes": 0, "num_queries": 0, "source": "", "record_id": "", "reason": "",
}


def _row(**values: Any) -> dict[str, Any]:
    unknown = set(values) - set(_ROW_DEFAULTS)
    if unknown:
        raise KeyError(f"unknown record columns {sorted(unknown)}")
    return {name: values.get(name, default) for name, default in _ROW_DEFAULTS.items()}


def _quarantine_row(ordinal: int, source: str, record_id: str, reason: str) -> dict[str, Any]:
    return _row(kind="quarantine", ordinal=ordinal, source=source, record_id=record_id,
                reason=reason)


def read_and_encode(task: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Ray Data `flat_map`: one reader task -> encoded sample rows and quarantine rows.

    A reader that raises mid-way (an unreadable annotation file) becomes one quarantine row for
    the whole task instead of a failed build.
    """
    folder_id = int(task.get("folder_id", 0))
    for row in _encoded_rows(task):
        row["folder_id"] = folder_id
        yield row


def _encoded_rows(task: dict[str, Any]) -> Iterator[dict[str, Any]]:
    from dataset_builders.sample import QuarantineEntry

    ordinal = int(task["part"]) << 32
    try:
        for item in _reader(task):
            ordinal += 1
            if isinstance(item, QuarantineEntry):
                yield _quarantine_row(ordinal, item.source, item.record_id, item.reason)
                continue
            try:
                members = encode_sample(item)
            except ShardFormatError as error:
                yield _quarantine_row(ordinal, str(item.source.get("image", "")), item.key,
                                      f"cannot encode: {error}")
                continue
            row = _row(kind="sample", ordinal=ordinal, key=item.key,
                       num_queries=item.num_queries,
                       **{column: members[member] for member, column in _MEMBER_COLUMNS.items()})
            row["nbytes"] = _tar_size(row)
            yield row
    except Exception as error:  # a reader failure must not kill a long build
        yield _quarantine_row(ordinal + 1, f"{task['dataset']}/{task['split']}",
                              "<reader>", f"reader failed: {type(error).__name__}: {error}")


def _tar_size(row: dict[str, Any]) -> int:
    """Bytes this sample adds to a tar: a header plus padded data per member."""
    return sum(TAR_BLOCK + -(-len(row[c]) // TAR_BLOCK) * TAR_BLOCK for c in _MEMBER_COLUMNS.values())


# ---------------------------------------------------------------- writing (runs in Ray tasks)

_INDEX_COLUMNS = ("folder_id", "kind", "ordinal", "key", "nbytes", "num_queries", "source",
                  "record_id", "reason")


def index_block(block: Any) -> Any:
    """Ray task: the small columns of one encoded block (a pandas frame), bytes left behind."""
    from ray.data.block import BlockAccessor

    table = BlockAccessor.for_block(block).to_arrow()
    return table.select(list(_INDEX_COLUMNS)).to_pandas()


def write_shard(folder: str, name: str, previous: dict[str, Any] | None,
                wanted: list[tuple[int, int]], *blocks: Any) -> dict[str, Any]:
    """Ray task: gather one shard's rows from the blocks holding them, write the tar.

    `wanted` lists the (folder_id, ordinal) of its rows. The tar is not rewritten when the
    existing file already has the sha256 and size of the previous manifest.
    """
    from ray.data.block import BlockAccessor

    wanted_set = set(wanted)
    samples = []
    for block in blocks:
        table = BlockAccessor.for_block(block).to_arrow()
        ids = zip(table.column("folder_id").to_pylist(), table.column("ordinal").to_pylist(),
                  strict=True)
        rows = [i for i, pair in enumerate(ids) if pair in wanted_set]
        for row in table.take(rows).to_pylist():
            samples.append({"__key__": row["key"],
                            **{member: row[column] for member, column in _MEMBER_COLUMNS.items()},
                            "num_queries": row["num_queries"]})
    samples.sort(key=lambda m: m["__key__"])
    if len(samples) != len(wanted_set):
        raise RuntimeError(f"{folder}/{name}: gathered {len(samples)} of {len(wanted_set)} rows")
    data = tar_bytes(samples)
    digest = hashlib.sha256(data).hexdigest()
    url = storage.join(folder, name)
    existing = storage.stat(url) if previous else None
    unchanged = bool(previous and previous["sha256"] == digest and existing
                     and existing.size == len(data))
    if not unchanged:
        storage.write_bytes(url, data)
    return {"name": name, "num_samples": len(samples), "sha256": digest, "bytes": len(data),
            "num_queries": sum(int(m["num_queries"]) for m in samples), "written": not unchanged}


# ---------------------------------------------------------------- driver

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


def input_folders(dataset_root: str, dataset: str, split: str) -> list[Path]:
    """The upstream folders a (dataset, split) is read from (`READ:dataset/README.md` layout)."""
    from dataset_builders.sources import input_paths

    return input_paths(dataset_root, dataset, split)


def input_fingerprint(folders: Sequence[Path]) -> str:
    """sha256 over (relative path, size, mtime) of every input file: cheap, no content reads.

    An entry may be a folder (walked) or a single file (an annotation JSON)."""
    digest = hashlib.sha256()
    for folder in folders:
        digest.update(str(folder).encode())
        if folder.is_file():
            info = os.stat(folder)
            digest.update(f"{info.st_size}\0{info.st_mtime_ns}\n".encode())
            continue
        if not folder.is_dir():
            digest.update(b"<missing>")
            continue
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for filename in sorted(filenames):
                info = os.stat(os.path.join(dirpath, filename))
                rel = os.path.relpath(os.path.join(dirpath, filename), folder)
                digest.update(f"{rel}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def build_fingerprint(dataset_root: str, dataset: str, split: str, shard_size_bytes: int) -> str:
    payload = {
        "schema": SCHEMA_VERSION, "dataset": dataset, "split": split,
        "shard_size_bytes": shard_size_bytes, "code": code_fingerprint(),
        "inputs": input_fingerprint(input_folders(dataset_root, dataset, split)),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def assign_shards(keys: Sequence[str], sizes: Sequence[int], shard_size_bytes: int) -> list[int]:
    """Shard index per key: keys in sorted order, a new shard when the next would overflow."""
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    assignment = [0] * len(keys)
    shard, used = 0, 0
    for i in order:
        if used and used + sizes[i] > shard_size_bytes:
            shard, used = shard + 1, 0
        assignment[i] = shard
        used += sizes[i]
    return assignment


def _load_manifest(url: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_bytes(url))
    except (FileNotFoundError, OSError, json.JSONDecodeError):
        return None


def _is_current(manifest: dict[str, Any] | None, fingerprint: str, folder: str) -> bool:
    if not manifest or manifest.get("fingerprint") != fingerprint:
        return False
    present = {entry.name: entry.size for entry in storage.list_files(folder)}
    return all(present.get(s["name"]) == s["bytes"] for s in manifest["shards"])


def _remote_args(out: str) -> dict[str, Any]:
    """For s3:// output, forward the AWS variables to Ray workers started before they were set.

    (A per-task runtime_env starts dedicated workers, so local builds do without it.)
    """
    if not storage.is_s3(out):
        return {}
    return {"runtime_env": {"env_vars": storage.aws_environment()}}


@dataclass
class _FolderPlan:
    """One (dataset, split) that needs building."""

    folder_id: int
    dataset: str
    split: str
    folder: str
    fingerprint: str
    previous: dict[str, dict[str, Any]]


def _build_folders(dataset_root: str, out: str, plans: list[_FolderPlan],
                   shard_size_bytes: int) -> dict[int, FolderReport]:
    """Read and encode every planned folder with Ray Data, then write the shards from Ray tasks.

    The encoded records stay in the object store; the driver only sees their small index
    columns, packs the sorted keys into shards, and each writer task fetches just the blocks
    holding its rows.
    """
    import ray
    import ray.data

    ensure_ray(log_to_driver=False)
    remote = _remote_args(out)
    num_parts = max(1, int(ray.cluster_resources().get("CPU", 1))) * READ_TASKS_PER_CPU
    tasks = [{**task, "folder_id": plan.folder_id}
             for plan in plans
             for task in plan_read_tasks(dataset_root, plan.dataset, plan.split, num_parts)]
    records = (ray.data.from_items(tasks, override_num_blocks=len(tasks))
               .flat_map(read_and_encode, **remote)
               .materialize())
    blocks = list({entry.ref.hex(): entry.ref
                   for bundle in records.iter_internal_ref_bundles()
                   for entry in bundle.blocks}.values())
    indexes = ray.get([ray.remote(index_block).remote(ref) for ref in blocks])
    owner = {(int(f), int(o)): position
             for position, frame in enumerate(indexes)
             for f, o in zip(frame["folder_id"], frame["ordinal"], strict=True)}
    index = pd.concat(indexes, ignore_index=True) if indexes else pd.DataFrame(
        columns=list(_INDEX_COLUMNS))

    writer = ray.remote(write_shard).options(**remote)
    pending: dict[int, list[Any]] = {plan.folder_id: [] for plan in plans}
    quarantine: dict[int, list[dict[str, str]]] = {}
    for plan in plans:
        rows = index[index["folder_id"] == plan.folder_id]
        entries = [
            {"source": str(r.source), "record_id": str(r.record_id), "reason": str(r.reason)}
            for r in rows[rows["kind"] == "quarantine"].sort_values("ordinal").itertuples()
        ]
        samples = rows[rows["kind"] == "sample"].sort_values(["key", "ordinal"])
        duplicated = samples.duplicated("key", keep="first")
        entries += [{"source": f"{plan.dataset}/{plan.split}", "record_id": str(r.key),
                     "reason": "duplicate key: another record already has this key"}
                    for r in samples[duplicated].itertuples()]
        quarantine[plan.folder_id] = entries
        kept = samples[~duplicated]
        members: dict[int, list[tuple[int, int]]] = {}
        shards = assign_shards(kept["key"].tolist(), kept["nbytes"].tolist(), shard_size_bytes)
        for ordinal, shard in zip(kept["ordinal"].tolist(), shards, strict=True):
            members.setdefault(shard, []).append((plan.folder_id, int(ordinal)))
        for shard, wanted in sorted(members.items()):
            name = shard_name(shard)
            needed = sorted({owner[pair] for pair in wanted})
            pending[plan.folder_id].append(writer.remote(
                plan.folder, name, plan.previous.get(name), wanted,
                *[blocks[i] for i in needed]))
    return {
        plan.folder_id: _finish_folder(plan.folder, plan.dataset, plan.split,
                                       ray.get(pending[plan.folder_id]),
                                       quarantine[plan.folder_id], plan.fingerprint,
                                       shard_size_bytes)
        for plan in plans
    }


def _finish_folder(folder: str, dataset: str, split: str, shard_rows: list[dict[str, Any]],
                   quarantine: list[dict[str, str]], fingerprint: str,
                   shard_size_bytes: int) -> FolderReport:
    """Delete strays, then write the manifest: the last step of every build."""
    shard_rows = sorted(shard_rows, key=lambda r: r["name"])
    keep = {r["name"] for r in shard_rows}
    for entry in storage.list_files(folder):  # strays of an earlier or interrupted build
        is_ours = SHARD_PATTERN.match(entry.name) or storage.TMP_MARKER in entry.name
        if is_ours and entry.name not in keep:
            storage.delete(storage.join(folder, entry.name))
    shards = [{"name": r["name"], "num_samples": int(r["num_samples"]),
               "sha256": str(r["sha256"]), "bytes": int(r["bytes"])} for r in shard_rows]
    manifest = {
        "schema": SCHEMA_VERSION, "dataset": dataset, "split": split,
        "num_samples": sum(s["num_samples"] for s in shards),
        "num_queries": int(sum(int(r["num_queries"]) for r in shard_rows)),
        "shards": shards, "quarantine": quarantine,
        "content_hash": content_hash([s["sha256"] for s in shards]),
        "fingerprint": fingerprint, "shard_size_bytes": shard_size_bytes,
    }
    storage.write_bytes(storage.join(folder, MANIFEST_NAME),
                        json.dumps(manifest, indent=1, sort_keys=True).encode())
    return FolderReport(dataset, split, folder, "built", manifest["num_samples"],
                        manifest["num_queries"], len(shards),
                        sum(bool(r["written"]) for r in shard_rows),
                        sum(s["bytes"] for s in shards), 0.0, quarantine,
                        manifest["content_hash"])


def write_samples(samples: Sequence[Any], folder: str, *, dataset: str, split: str,
                  quarantine: Sequence[Any] = (),
                  shard_size_mb: float = DEFAULT_SHARD_SIZE_MB) -> FolderReport:
    """Write canonical samples as a shard folder in this process, without Ray.

    The same packing, tars and manifest as `build_shards`; for small folders made in tests and
    tools that already hold `Sample`s. `quarantine` takes `QuarantineEntry`s.
    """
    shard_size_bytes = int(shard_size_mb * 1024 * 1024)
    storage.delete(storage.join(folder, MANIFEST_NAME))
    by_key = {}
    for sample in samples:
        members = encode_sample(sample)
        row = {"__key__": sample.key, **members, "num_queries": sample.num_queries}
        by_key[sample.key] = row
    keys = sorted(by_key)
    sizes = [_tar_size({c: by_key[k][m] for m, c in _MEMBER_COLUMNS.items()}) for k in keys]
    assignment = assign_shards(keys, sizes, shard_size_bytes)
    shard_rows = []
    for shard in sorted(set(assignment)):
        rows = [by_key[k] for k, a in zip(keys, assignment, strict=True) if a == shard]
        data = tar_bytes(rows)
        storage.write_bytes(storage.join(folder, shard_name(shard)), data)
        shard_rows.append({"name": shard_name(shard), "num_samples": len(rows),
                           "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                           "num_queries": sum(r["num_queries"] for r in rows), "written": True})
    entries = [{"source": q.source, "record_id": q.record_id, "reason": q.reason}
               for q in quarantine]
    return _finish_folder(folder, dataset, split, shard_rows, entries, "", shard_size_bytes)


def build_shards(dataset_root: str, out: str, *, datasets: Sequence[str] = ("reason_seg",),
                 splits: Sequence[str] | None = None,
                 shard_size_mb: float = DEFAULT_SHARD_SIZE_MB) -> list[FolderReport]:
    """Build every requested (dataset, split); the function the workflow calls.

    Uses the running Ray (or starts a local one). `splits` defaults to the dataset's usual
    splits; a (dataset, split) whose input folder is absent is skipped with a message. Folders
    already built from the same inputs, options and code are left untouched ("up-to-date").
    """
    storage.check_reachable(out)
    if not Path(dataset_root).is_dir():
        raise FileNotFoundError(f"dataset root {dataset_root} is not a folder")
    started = time.perf_counter()
    shard_size_bytes = int(shard_size_mb * 1024 * 1024)
    reports: dict[int, FolderReport] = {}
    plans: list[_FolderPlan] = []
    for dataset in datasets:
        wanted = list(splits) if splits else list(DEFAULT_SPLITS.get(dataset, ("train", "val")))
        for split in wanted:
            if not all(f.exists() for f in input_folders(dataset_root, dataset, split)[:1]):
                print(f"{dataset}/{split}: no input folder under {dataset_root}, skipped")
                continue
            folder_id = len(reports) + len(plans)
            folder = storage.join(out, dataset, split)
            manifest_url = storage.join(folder, MANIFEST_NAME)
            fingerprint = build_fingerprint(dataset_root, dataset, split, shard_size_bytes)
            old = _load_manifest(manifest_url)
            if old is not None and _is_current(old, fingerprint, folder):
                reports[folder_id] = FolderReport(
                    dataset, split, folder, "up-to-date", old["num_samples"], old["num_queries"],
                    len(old["shards"]), 0, sum(s["bytes"] for s in old["shards"]), 0.0,
                    old["quarantine"], old["content_hash"])
                continue
            storage.delete(manifest_url)  # from here until the build ends: no manifest
            previous = {s["name"]: s for s in (old or {}).get("shards", [])}
            plans.append(_FolderPlan(folder_id, dataset, split, folder, fingerprint, previous))
    if plans:
        reports.update(_build_folders(dataset_root, out, plans, shard_size_bytes))
    elapsed = time.perf_counter() - started
    for report in reports.values():
        report.seconds = elapsed
    return [reports[i] for i in sorted(reports)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset-root", required=True, help="folder with the upstream layout")
    parser.add_argument("--out", required=True, help="local folder or s3://bucket/prefix")
    parser.add_argument("--datasets", nargs="+", default=["reason_seg"])
    parser.add_argument("--splits", nargs="+", default=None)
    parser.add_argument("--shard-size-mb", type=float, default=DEFAULT_SHARD_SIZE_MB)
    args = parser.parse_args(argv)
    try:
        refuse_relative_paths({"--dataset-root": args.dataset_root, "--out": args.out})
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    import ray
    import ray.data

    ensure_ray(log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    started = time.perf_counter()
    reports = build_shards(args.dataset_root, args.out, datasets=args.datasets,
                           splits=args.splits, shard_size_mb=args.shard_size_mb)
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
    raise SystemExit(main())
