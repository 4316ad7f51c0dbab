"""Training batches prepared off the training thread, resumable under any number of workers.

`TrainBatches` runs `data.loader_workers` torch DataLoader worker processes per rank; each is one
loader *part* that reads its own shards (`plan`), mixes datasets by rate, decodes, draws the
training conversations and collates (tokenisation, CLIP and SAM preprocessing) into a ready
`ReadBatch`, `data.prefetch_batches` ahead. The training thread only takes finished batches.

Every batch carries the position of the part that made it, so the main process always knows
exactly which samples the optimizer has consumed (prefetched batches are not counted).
`state()` is that position as JSON; `TrainBatches(..., restored=[states of every rank])`
continues from it, with the same or another number of ranks and loader workers
(docs/architecture.md, "Resume").
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipelines.examples import training_example
from pipelines.ingestion.plan import initial_state, merge_states, resplit
from pipelines.ingestion.stream import PartStream, layouts_of
from pipelines.integrity import (
    DamagePolicy,
    IntegrityReport,
    apply_policy,
)
from pipelines.shard_reader import DEFAULT_CACHE_DIR, ShardCache
from pipelines.shard_sets import ShardSet, ShardSetError, open_version
from read_model.turns import DEFAULT_SEM_SEG_MODES, SemSegModes

logger = logging.getLogger(__name__)

STATE_FILE = "ingest_rank{rank}.json"
INTEGRITY_FILE = "integrity_rank{rank}.json"


@dataclass(frozen=True)
class LoaderOptions:
    """Everything a loader part needs besides the data (picklable, from the job config)."""

    batch_size: int
    seed: int
    rates: tuple[float, ...]
    num_per_sample: int
    true_premise_prob: float
    sem_seg_modes: SemSegModes = DEFAULT_SEM_SEG_MODES
    loader_workers: int = 2
    prefetch_batches: int = 2
    open_units: int = 2
    cache_dir: str = ""
    cache_max_bytes: int = 50 * 2**30
    policy: DamagePolicy = "skip"
    max_damaged_fraction: float = 0.05

    @property
    def parts_per_rank(self) -> int:
        return max(1, self.loader_workers)

    def cache(self) -> ShardCache:
        return ShardCache(Path(self.cache_dir) if self.cache_dir else DEFAULT_CACHE_DIR,
                          self.cache_max_bytes)


@dataclass
class LoaderItem:
    """One batch and the state of the part that made it, right after making it."""

    batch: Any
    part: int
    part_state: dict[str, Any]
    report: dict[str, Any]
    shards: list[str]  # the shard of each example in the batch
    samples: list[tuple[str, int, int]]  # (sample key, dataset index, epoch) of each example


class PartBatches(IterableDataset):
    """The endless batches of the parts of one rank (one part per DataLoader worker)."""

    def __init__(self, shard_sets: Sequence[ShardSet], state: dict[str, Any],
                 options: LoaderOptions, first_part: int, turn: int,
                 collate: Callable[[list[Any]], Any]) -> None:
        super().__init__()
        self.shard_sets, self.state = list(shard_sets), state
        self.options, self.first_part, self.collate = options, first_part, collate
        self.turn = turn  # the part whose batch comes next; DataLoader starts at worker 0

    def __iter__(self) -> Iterator[LoaderItem]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        part = self.first_part + (worker + self.turn) % self.options.parts_per_rank
        options = self.options
        report = IntegrityReport()
        stream = PartStream(self.shard_sets, options.rates, state=self.state, part=part,
                            open_units=options.open_units, cache=options.cache(), report=report)
        while True:
            examples, shards, samples = [], [], []
            while len(examples) < options.batch_size:
                drawn = next(stream)
                try:
                    example = training_example(drawn.sample, num_per_sample=options.num_per_sample,
                                               seed=options.seed, epoch=drawn.ref.epoch,
                                               true_premise_prob=options.true_premise_prob,
                                               sem_seg_modes=options.sem_seg_modes)
                except (ValueError, OSError) as error:  # an image PIL cannot decode
                    report.sample_skipped(f"unusable image: {error}")
                    continue
                if example is None:
                    report.sample_skipped("no usable query")
                    continue
                examples.append(example)
                shards.append(drawn.shard_url)
                samples.append((drawn.sample.key, drawn.ref.dataset_index, drawn.ref.epoch))
            yield LoaderItem(self.collate(examples), part, stream.state(), report.to_dict(),
                             shards, samples)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # one core per loader process; the rank's threads train
    # Batches leave this process through shared memory named by file, not one passed file
    # descriptor per tensor: the descriptor hand-over costs the training thread an
    # authenticated socket connection per tensor (docs/architecture.md section 7.7).
    torch.multiprocessing.set_sharing_strategy("file_system")


class TrainBatches:
    """Ready training batches for one rank; see the module docstring."""

    def __init__(self, shard_sets: Sequence[ShardSet], options: LoaderOptions, *, rank: int,
                 world_size: int, collate: Callable[[list[Any]], Any],
                 restored: Sequence[dict[str, Any]] | None = None,
                 prior_report: IntegrityReport | None = None) -> None:
        """`restored`: the states every rank of the checkpoint saved; `prior_report`: what the
        run read before it (give it to one rank only, it is summed over ranks)."""
        self.shard_sets, self.options = list(shard_sets), options
        num_parts = world_size * options.parts_per_rank
        layouts = layouts_of(self.shard_sets)
        in_place = False
        if restored:
            merged = merge_states(list(restored))
            state = resplit(merged, num_parts)
            in_place = state is merged  # same number of parts: continue exactly
            sizes = {layout.name: list(layout.shard_sizes) for layout in layouts}
            if state["datasets"] != [layout.name for layout in layouts] or \
                    state["shard_sizes"] != sizes:
                raise ShardSetError("the checkpoint's data position belongs to other shard sets "
                                    f"({state['datasets']}); resume with the data it was "
                                    "trained on")
        else:
            state = initial_state(layouts, seed=options.seed, num_parts=num_parts)
        state["versions"] = {s.name: s.url for s in self.shard_sets}
        self._base = {k: v for k, v in state.items() if k not in ("parts", "turns")}
        first = rank * options.parts_per_rank
        self.parts = list(range(first, first + options.parts_per_rank))
        self.rank = rank
        turn = int(state.get("turns", {}).get(str(rank), 0)) if in_place else 0
        self._turn = turn
        self._part_states = {p: state["parts"].get(str(p), {}) for p in self.parts}
        self._reports = {p: IntegrityReport() for p in self.parts}
        self._prior = prior_report or IntegrityReport()
        self._consumed: dict[str, str] = {}
        self._sha = {s.shard_url(e.name): e.sha256 for s in self.shard_sets
                     for e in s.manifest.shards}
        self._total_shards = sum(len(s.manifest.shards) for s in self.shard_sets)
        dataset = PartBatches(self.shard_sets, state, options, first, turn, collate)
        workers = options.loader_workers
        self._loader = DataLoader(dataset, batch_size=None, num_workers=workers,
                                  prefetch_factor=options.prefetch_batches if workers else None,
                                  worker_init_fn=_worker_init if workers else None)
        self._iterator: Iterator[LoaderItem] | None = None
        self.wait_seconds = 0.0
        self.batches = 0
        self.last_samples: list[tuple[str, int, int]] = []  # (key, dataset, epoch), last batch

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> Any:
        started = time.perf_counter()
        if self._iterator is None:
            self._iterator = iter(self._loader)
        item = next(self._iterator)
        self.wait_seconds += time.perf_counter() - started
        self.batches += 1
        self.last_samples = item.samples
        self._part_states[item.part] = item.part_state
        self._reports[item.part] = IntegrityReport.from_dict(item.report)
        for url in item.shards:
            self._consumed[url] = self._sha[url]
        if item.report.get("damaged"):
            damaged = IntegrityReport()
            for report in self._reports.values():
                damaged.damaged.update(report.damaged)
            apply_policy(damaged, self.options.policy, total_shards=self._total_shards,
                         max_fraction=self.options.max_damaged_fraction)
        return item.batch

    def state(self) -> dict[str, Any]:
        """This rank's data position (JSON): what the optimizer consumed, nothing prefetched."""
        turn = (self._turn + self.batches) % self.options.parts_per_rank
        return {**self._base, "parts": {str(p): s for p, s in self._part_states.items()},
                "turns": {str(self.rank): turn}}

    def report(self) -> IntegrityReport:
        """Damage and skips seen by this rank's parts, and the shards its batches came from."""
        merged = self._prior
        for report in self._reports.values():
            merged = merged.merge(report)
        merged.consumed = {**self._prior.consumed, **self._consumed}
        return merged

    def metrics(self) -> dict[str, float]:
        return {**self.report().metrics(), "data/wait_s": self.wait_seconds}

    def save(self, directory: str | Path, rank: int) -> None:
        """Write this rank's position and integrity report into a checkpoint folder."""
        directory = Path(directory)
        (directory / STATE_FILE.format(rank=rank)).write_text(json.dumps(self.state()))
        (directory / INTEGRITY_FILE.format(rank=rank)).write_text(
            json.dumps(self.report().to_dict()))

    def close(self) -> None:
        self._iterator = None  # ends the worker processes


def load_states(directory: str | Path) -> list[dict[str, Any]]:
    """Every rank's saved position in a checkpoint folder (empty for a checkpoint without)."""
    return [json.loads(path.read_text())
            for path in sorted(Path(directory).glob(STATE_FILE.format(rank="*")))]


def restore(directory: str | Path, rank: int
            ) -> tuple[list[dict[str, Any]], IntegrityReport | None]:
    """(every rank's saved position, the run's integrity so far for rank 0 / None for others)."""
    return load_states(directory), load_reports(directory) if rank == 0 else None


def load_reports(directory: str | Path) -> IntegrityReport:
    """The integrity reports of every rank in a checkpoint folder, merged."""
    merged = IntegrityReport()
    for path in sorted(Path(directory).glob(INTEGRITY_FILE.format(rank="*"))):
        merged = merged.merge(IntegrityReport.from_dict(json.loads(path.read_text())))
    return merged


def pinned_shard_sets(shard_sets: Sequence[ShardSet],
                      restored: Sequence[dict[str, Any]] | None) -> list[ShardSet]:
    """The versions a resumed run keeps reading: those its checkpoint names, when it names any.

    A run started again after a rebuild must not switch data half-way; it reopens the version
    folders it was trained on (immutable, so still what it read).
    """
    if not restored:
        return list(shard_sets)
    versions = dict(restored[0].get("versions", {}))
    pinned = []
    for shard_set in shard_sets:
        url = versions.get(shard_set.name)
        if url and url != shard_set.url:
            logger.warning("%s: resuming on version %s recorded in the checkpoint (the pointer "
                           "now names %s)", shard_set.name, url, shard_set.url)
            pinned.append(open_version(url, name=shard_set.name))
        else:
            pinned.append(shard_set)
    return pinned
