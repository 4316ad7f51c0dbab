"""Synthetic scenes -> shard folders, without Ray, for benchmarks that must start quickly.

Writes the same schema as `pipelines/build_shards.py` (docs/architecture.md §2) from the
synthetic generator's upstream-format folders, read by the real `dataset_builders` readers.
"""

from __future__ import annotations

from pathlib import Path

from dataset_builders.reason_seg import iter_reason_seg
from dataset_builders.refer import iter_refer
from dataset_builders.sample import Sample
from dataset_builders.synthetic import generate_dataset
from pipelines import storage
from pipelines.build_shards import write_samples

SHARD_SIZE_MB = 0.25  # about a dozen synthetic samples per shard
FOLDERS = (("reason_seg", "train"), ("reason_seg", "val"), ("refcoco", "train"), ("refcoco", "val"))


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
            write_samples(samples, storage.join(str(out), dataset, split), dataset=dataset,
                          split=split, shard_size_mb=SHARD_SIZE_MB)
        counts[f"{dataset}/{split}"] = len(samples)
    return counts
