"""One loader part's endless stream of samples, mixed across datasets by sample rates.

Each draw first picks a dataset with probability rate / sum(rates) (seeded by part and draw
count, so a resume repeats the choices), then takes that dataset's next sample from the part's
`DatasetCursor`. Shards are read whole through `read_shard` (sha256 checked while streaming) and
kept for the few units open at a time; a damaged shard is excluded whole, named in the
`IntegrityReport` and never read again by this part; a sample that does not decode is skipped
and counted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dataset_builders.sample import Sample
from pipelines.ingestion.plan import DatasetCursor, Layout, NoSamplesError, SampleRef, deals_of
from pipelines.integrity import IntegrityReport
from pipelines.shard_format import ShardFormatError, decode_sample
from pipelines.shard_reader import DamagedShard, ShardCache, read_shard
from pipelines.shard_sets import ShardSet

MIX_BLOCK = 1024  # dataset choices are drawn in seeded blocks


def layouts_of(shard_sets: Sequence[ShardSet]) -> list[Layout]:
    return [Layout(s.name, tuple(e.num_samples for e in s.manifest.shards)) for s in shard_sets]


@dataclass
class Drawn:
    """A decoded sample with where it came from."""

    sample: Sample
    ref: SampleRef
    shard_url: str


class PartStream:
    """Samples for one loader part; `state()` is its JSON position (see `plan`)."""

    def __init__(self, shard_sets: Sequence[ShardSet], rates: Sequence[float], *,
                 state: dict[str, Any], part: int, open_units: int = 2,
                 cache: ShardCache | None = None, report: IntegrityReport | None = None,
                 shuffle: bool = True) -> None:
        if len(rates) != len(shard_sets) or not shard_sets:
            raise ValueError("one sample rate per shard set is needed")
        weights = np.asarray(rates, dtype=np.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"sample rates must be non-negative with a positive sum: {rates}")
        self.shard_sets = list(shard_sets)
        self.probabilities = weights / weights.sum()
        self.part, self.seed = part, int(state["seed"])
        self.resplits = int(state.get("resplits", 0))
        saved = state["parts"].get(str(part), {})
        self.mix_draws = int(saved.get("mix_draws", 0))
        self.cursors = [
            DatasetCursor(layout, index, seed=self.seed, part=part,
                          num_parts=int(state["num_parts"]), deals=deals_of(state, layout.name),
                          saved=saved.get("datasets", {}).get(layout.name),
                          open_units=open_units, shuffle=shuffle)
            for index, layout in enumerate(layouts_of(self.shard_sets))
        ]
        self.cache, self.report = cache, report if report is not None else IntegrityReport()
        self._open: OrderedDict[tuple[int, int], list[dict[str, Any]]] = OrderedDict()
        self._keep_open = max(1, open_units) * len(self.shard_sets) + 1
        self._damaged: set[tuple[int, int]] = set()
        self._block_index, self._block = -1, np.empty(0, dtype=np.int64)

    def state(self) -> dict[str, Any]:
        return {"mix_draws": self.mix_draws,
                "datasets": {c.layout.name: c.state() for c in self.cursors}}

    def _pick_dataset(self) -> int:
        if len(self.cursors) == 1:
            return 0
        block = self.mix_draws // MIX_BLOCK
        if block != self._block_index:
            rng = np.random.default_rng([self.seed, self.part, self.resplits, block, 2])
            self._block = rng.choice(len(self.cursors), size=MIX_BLOCK, p=self.probabilities)
            self._block_index = block
        return int(self._block[self.mix_draws % MIX_BLOCK])

    def _records(self, dataset: int, shard: int) -> list[dict[str, Any]] | None:
        key = (dataset, shard)
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key]
        if key in self._damaged:
            return None
        shard_set = self.shard_sets[dataset]
        entry = shard_set.manifest.shards[shard]
        url = shard_set.shard_url(entry.name)
        try:
            records = read_shard(url, entry, self.cache)
        except DamagedShard as damage:
            self.report.shard_damaged(damage.url, damage.reason)
            self._damaged.add(key)
            return None
        self._open[key] = records
        while len(self._open) > self._keep_open:
            self._open.popitem(last=False)
        return records

    def __iter__(self) -> Iterator[Drawn]:
        return self

    def __next__(self) -> Drawn:
        while True:
            dataset = self._pick_dataset()
            self.mix_draws += 1
            cursor = self.cursors[dataset]
            while True:
                ref = cursor.take()
                records = self._records(dataset, ref.shard)
                if records is not None:
                    break
                cursor.drop_shard(ref.shard)
                if all((dataset, s) in self._damaged for s in range(cursor.layout.num_shards)):
                    raise NoSamplesError(f"{cursor.layout.name}: every shard is damaged")
            shard_set = self.shard_sets[dataset]
            url = shard_set.shard_url(shard_set.manifest.shards[ref.shard].name)
            try:
                sample = decode_sample(records[ref.position])
            except ShardFormatError as error:
                self.report.sample_skipped(f"undecodable sample: {error}")
                continue
            return Drawn(sample, ref, url)
