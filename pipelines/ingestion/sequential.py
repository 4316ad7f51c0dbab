"""Every sample of some shard sets once, in a fixed order, split between ranks (validation).

Shards are dealt to ranks by their index over all sets; with fewer shards than ranks every rank
reads all of them and keeps every `world_size`-th sample instead. Shards are verified as they
are read (`read_shard`); damage is recorded in the `IntegrityReport`, never raised.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from dataset_builders.sample import Sample
from pipelines.integrity import IntegrityReport
from pipelines.shard_format import ShardFormatError, decode_sample
from pipelines.shard_reader import DamagedShard, ShardCache, read_shard
from pipelines.shard_sets import ShardSet


def rank_samples(shard_sets: Sequence[ShardSet], *, rank: int = 0, world_size: int = 1,
                 report: IntegrityReport | None = None,
                 cache: ShardCache | None = None) -> Iterator[Sample]:
    """This rank's share of every sample, in manifest order."""
    report = report if report is not None else IntegrityReport()
    shards = [(s, e) for s in shard_sets for e in s.manifest.shards]
    whole = len(shards) >= world_size
    index = 0
    for position, (shard_set, entry) in enumerate(shards):
        if whole and position % world_size != rank:
            continue
        url = shard_set.shard_url(entry.name)
        try:
            records = read_shard(url, entry, cache)
        except DamagedShard as damage:
            report.shard_damaged(damage.url, damage.reason)
            index += entry.num_samples
            continue
        report.shard_consumed(url, entry.sha256)
        for record in records:
            mine = whole or index % world_size == rank
            index += 1
            if not mine:
                continue
            try:
                yield decode_sample(record)
            except ShardFormatError as error:
                report.sample_skipped(f"undecodable sample: {error}")
