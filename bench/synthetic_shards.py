"""Synthetic scenes -> shard folders, without Ray, for benchmarks that must start quickly.

Writes the same schema as `pipelines/build_shards.py` (docs/architecture.md §2) from the
synthetic generator's upstream-format folders, read by the real `dataset_builders` readers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dataset_builders.reason_seg import iter_reason_seg
from dataset_builders.refer import iter_refer
from dataset_builders.sample import Sample
from dataset_builders.synthetic import generate_dataset
from pipelines import storage
from pipelines.shard_format import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    content_hash,
    encode_sample,
    shard_name,
    tar_bytes,
)

SAMPLES_PER_SHARD = 16
FOLDERS = (("reason_seg", "train"), ("reason_seg", "val"), ("refcoco", "train"), ("refcoco", "val"))


def write_shard_folder(samples: list[Sample], base: str, dataset: str, split: str,
                       samples_per_shard: int = SAMPLES_PER_SHARD) -> None:
    shards = []
    for start in range(0, len(samples), samples_per_shard):
        chunk = samples[start:start + samples_per_shard]
        data = tar_bytes([encode_sample(s) for s in chunk])
        name = shard_name(len(shards))
        storage.write_bytes(storage.join(base, dataset, split, name), data)
        shards.append({"name": name, "num_samples": len(chunk), "bytes": len(data),
                       "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"schema": SCHEMA_VERSION, "dataset": dataset, "split": split,
                "num_samples": len(samples), "num_queries": sum(s.num_queries for s in samples),
                "shards": shards, "quarantine": [],
                "content_hash": content_hash([s["sha256"] for s in shards])}
    storage.write_bytes(storage.join(base, dataset, split, MANIFEST_NAME),
                        json.dumps(manifest).encode())


def synthetic_shards(workdir: Path, *, images: int, seed: int = 0) -> dict[str, int]:
    """Generate `images` scenes under workdir/raw and shard them into workdir/shards."""
    raw, out = workdir / "raw", workdir / "shards"
    generate_dataset(raw, seed=seed, images=images)
    counts = {}
    for dataset, split in FOLDERS:
        reader = (iter_reason_seg(raw, split) if dataset == "reason_seg"
                  else iter_refer(raw, dataset, split))
        samples = [s for s in reader if isinstance(s, Sample)]
        if samples:
            write_shard_folder(samples, str(out), dataset, split)
        counts[f"{dataset}/{split}"] = len(samples)
    return counts
