"""Each worker's training batches and validation share, on the shard versions the driver pinned.

The driver resolves every `<dataset>/<split>` of `data.train` and `data.val` once
(`pipelines/shard_sets.py`) and hands the workers the version folders (`pinned_urls`), so every
rank, every restart and every resumed run reads the same bytes, whatever a rebuild does to the
pointers meanwhile. Training batches come from `pipelines/ingestion/loader.py` (prepared in
DataLoader worker processes, resumable under any world size), datasets mixed by
`pipelines.mixing.train_rates`; validation reads every val sample once, split by rank, with
fixed templates.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

from pipelines.config import DataConfig, JobConfig
from pipelines.examples import evaluation_example
from pipelines.ingestion.loader import LoaderOptions, TrainBatches, pinned_shard_sets
from pipelines.ingestion.loader import restore as restore_data
from pipelines.ingestion.sequential import rank_samples
from pipelines.integrity import IntegrityReport, resolve_policy
from pipelines.mixing import train_rates
from pipelines.shard_sets import ShardSet, open_version, resolve
from read_model.batch import ReadExample, collate_train
from read_model.turns import SemSegModes

__all__ = ["loader_options", "open_pinned", "pinned_urls", "restore_data", "sem_seg_modes",
           "train_batches", "validation_batches"]


def sem_seg_modes(data: DataConfig) -> SemSegModes:
    return SemSegModes(data.sem_seg_true_premise_prob, data.sem_seg_denial_prob,
                       data.sem_seg_correction_prob)


def pinned_urls(shard_sets: Sequence[ShardSet]) -> dict[str, str]:
    """{name: version folder} as the driver passes it to the workers."""
    return {s.name: s.url for s in shard_sets}


def open_pinned(config: JobConfig, names: Sequence[str],
                pinned: dict[str, str] | None) -> list[ShardSet]:
    """The pinned versions of `names`; resolved here only when no pin was given."""
    pinned = pinned or {}
    return [open_version(pinned[n], name=n) if n in pinned else resolve(config.data.shards, n)
            for n in names]


def loader_options(config: JobConfig) -> LoaderOptions:
    data = config.data
    return LoaderOptions(
        batch_size=config.train.batch_size, seed=config.train.seed,
        rates=tuple(train_rates(data)),
        num_per_sample=config.model.num_classes_per_sample,
        true_premise_prob=data.true_premise_prob, sem_seg_modes=sem_seg_modes(data), loader_workers=data.loader_workers,
        prefetch_batches=data.prefetch_batches, open_units=data.open_shards,
        cache_dir=data.cache_dir, cache_max_bytes=int(data.cache_max_gb * 2**30),
        policy=resolve_policy(data.on_damaged_shard, "train"),
        max_damaged_fraction=data.max_damaged_shard_fraction)


def train_batches(config: JobConfig, shard_sets: Sequence[ShardSet], *, rank: int,
                  world_size: int, tokenizer: Any, num_image_tokens: int,
                  restored: Sequence[dict[str, Any]] | None = None,
                  prior_report: IntegrityReport | None = None) -> TrainBatches:
    """Collated `ReadBatch`es for one rank, continuing from `restored` when given."""
    collate = functools.partial(collate_train, tokenizer=tokenizer, config=config.model,
                                num_image_tokens=num_image_tokens)
    return TrainBatches(pinned_shard_sets(shard_sets, restored), loader_options(config),
                        rank=rank, world_size=world_size, collate=collate, restored=restored,
                        prior_report=prior_report)


def validation_batches(config: JobConfig, shard_sets: Sequence[ShardSet], *, rank: int,
                       world_size: int, batch_size: int,
                       report: IntegrityReport | None = None,
                       seen: list[int] | None = None) -> Iterator[list[ReadExample]]:
    """This rank's share of every val set, once, in fixed order (S3 shards via the node cache).
    `seen[0]` counts the samples read (the validation's coverage)."""
    batch: list[ReadExample] = []
    cache = loader_options(config).cache()
    for sample in rank_samples(shard_sets, rank=rank, world_size=world_size, report=report,
                               cache=cache):
        if seen is not None:
            seen[0] += 1
        example = evaluation_example(sample)
        if example is None:
            continue
        batch.append(example)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
