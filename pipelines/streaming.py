"""The one shard reader that training and evaluation share.

`ShardSource(url)` opens a built shard folder (local or s3://) through its manifest.
`iter_samples(...)` streams one epoch of canonical `Sample`s for one (rank, dataloader worker):
the shard order is shuffled per epoch from (seed, epoch), the shards are split between all
rank x worker parts (or, when there are fewer shards than parts, the samples are split
round-robin so no part is left empty), and a bounded buffer shuffles samples. Every draw comes
from a seeded generator, so a checkpoint only needs (epoch, position) to resume exactly
(`ShardStream.state()`).

`MixedStream` mixes several datasets by sample rates (upstream mixes such as 10,1,1,1,1,10):
each draw picks a dataset with probability rate / sum(rates) and each dataset cycles through its
own epochs independently.

A damaged shard (truncated tar, corrupt member, wrong checksum) is logged and counted in
`StreamStats` and skipped; the samples around it still arrive. `ray_dataset(sources)` is the
Ray Data path (`ray.data.read_webdataset`, members kept as bytes) used by batch inference;
`decode_sample` turns its rows into `Sample`s.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dataset_builders.sample import Sample
from pipelines import storage
from pipelines.shard_format import (
    MANIFEST_NAME,
    MEMBER_NAMES,
    SCHEMA_VERSION,
    ShardFormatError,
    decode_sample,
)

logger = logging.getLogger(__name__)

DEFAULT_SHUFFLE_BUFFER = 256
MIX_BLOCK = 4096  # dataset draws are generated in seeded blocks so a resume jumps straight in
MAX_RECORDED_ERRORS = 100


class StreamError(RuntimeError):
    """A shard folder cannot be streamed at all (no manifest, missing shards, no data)."""


@dataclass(frozen=True)
class ShardInfo:
    url: str
    name: str
    num_samples: int
    sha256: str
    bytes: int


@dataclass
class StreamStats:
    """What a stream delivered and what it had to skip (logged as it happens)."""

    samples: int = 0
    skipped_samples: int = 0
    damaged_shards: int = 0
    errors: list[str] = field(default_factory=list)

    def report(self, message: str, *, shard_damaged: bool = False, skipped: int = 0) -> None:
        logger.warning("shard stream: %s", message)
        self.skipped_samples += skipped
        self.damaged_shards += int(shard_damaged)
        if len(self.errors) < MAX_RECORDED_ERRORS:
            self.errors.append(message)


class ShardSource:
    """A built `<dataset>/<split>` shard folder, opened through its manifest.

    A folder without a manifest is refused: the build did not finish, and its shards may be
    partial. With `verify`, every shard the manifest lists must exist.
    """

    def __init__(self, url: str, *, verify: bool = True) -> None:
        self.url = str(url).rstrip("/")
        manifest_url = storage.join(self.url, MANIFEST_NAME)
        try:
            raw = storage.read_bytes(manifest_url)
        except (FileNotFoundError, OSError) as error:
            raise StreamError(
                f"{self.url}: cannot read {MANIFEST_NAME} ({error}); the folder was not built "
                "or its build did not finish"
            ) from error
        manifest = json.loads(raw)
        if manifest.get("schema") != SCHEMA_VERSION:
            raise StreamError(
                f"{manifest_url}: shard schema {manifest.get('schema')!r}, this reader "
                f"understands {SCHEMA_VERSION}"
            )
        self.manifest: dict[str, Any] = manifest
        self.shards = [
            ShardInfo(storage.join(self.url, s["name"]), s["name"], int(s["num_samples"]),
                      s["sha256"], int(s["bytes"]))
            for s in manifest["shards"]
        ]
        if verify:
            self._verify_listing()

    def _verify_listing(self) -> None:
        """Missing shards are an error; a shard of the wrong size is only logged here, because
        streaming it skips what is damaged and delivers the rest."""
        present = {entry.name: entry.size for entry in storage.list_files(self.url)}
        missing = [s.name for s in self.shards if s.name not in present]
        if missing:
            raise StreamError(f"{self.url}: shards listed in the manifest are missing: "
                              f"{', '.join(missing)}")
        for shard in self.shards:
            if present[shard.name] != shard.bytes:
                logger.warning("%s: %d bytes, the manifest says %d; damaged samples will be "
                               "skipped", shard.url, present[shard.name], shard.bytes)

    @property
    def dataset(self) -> str:
        return str(self.manifest["dataset"])

    @property
    def split(self) -> str:
        return str(self.manifest["split"])

    @property
    def num_samples(self) -> int:
        return int(self.manifest["num_samples"])

    @property
    def content_hash(self) -> str:
        return str(self.manifest["content_hash"])

    def __repr__(self) -> str:
        return f"ShardSource({self.url!r}, samples={self.num_samples}, shards={len(self.shards)})"


def open_sources(base: str, names: Iterable[str]) -> list[ShardSource]:
    """`ShardSource`s for "<dataset>/<split>" names under a shard root."""
    return [ShardSource(storage.join(base, name)) for name in names]


def iter_shard_records(shard: ShardInfo, stats: StreamStats) -> Iterator[dict[str, Any]]:
    """Raw WebDataset samples ({"__key__", member: bytes}) of one shard, in tar order.

    The shard is fetched whole (one GET on S3; shards are tens of MB) and checked against its
    sha256. Damage never escapes as an exception: a truncated or unreadable tar ends the shard
    early, a sample with missing members is skipped, and each is reported with the shard's name.
    """
    delivered = 0
    current: dict[str, Any] = {}
    checksum_failed = False  # a shard is counted as damaged once, whatever else is wrong
    try:
        data = storage.read_bytes(shard.url)
        if hashlib.sha256(data).hexdigest() != shard.sha256:
            checksum_failed = True
            stats.report(f"{shard.url}: sha256 differs from the manifest", shard_damaged=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                key, _, member = info.name.partition(".")
                if info.offset_data + info.size > len(data):
                    raise tarfile.ReadError(f"member {info.name} truncated at "
                                            f"{len(data) - info.offset_data} of {info.size} bytes")
                if current and current["__key__"] != key:
                    delivered += yield from _complete(current, shard, stats)
                    current = {}
                current.setdefault("__key__", key)
                current.setdefault("__url__", shard.url)
                current[member] = data[info.offset_data: info.offset_data + info.size]
        if current:
            delivered += yield from _complete(current, shard, stats)
            current = {}
    except (tarfile.TarError, EOFError, OSError) as error:
        lost = max(shard.num_samples - delivered, 0)
        stats.report(f"{shard.url}: unreadable after {delivered} samples ({error}); "
                     f"{lost} samples skipped", shard_damaged=not checksum_failed, skipped=lost)
        return
    if delivered != shard.num_samples:
        lost = max(shard.num_samples - delivered, 0)
        stats.report(f"{shard.url}: {delivered} samples read, manifest lists {shard.num_samples}",
                     shard_damaged=not checksum_failed, skipped=lost)


def _complete(record: dict[str, Any], shard: ShardInfo, stats: StreamStats):
    """Yield a record whose members are all present; report it otherwise. Returns 1 or 0."""
    missing = [m for m in MEMBER_NAMES if m not in record]
    if missing:
        stats.report(f"{shard.url}: sample {record['__key__']!r} lacks {missing}", skipped=1)
        return 0
    yield record
    return 1


def epoch_shards(sources: Sequence[ShardSource], *, epoch: int, seed: int,
                 shuffle: bool = True) -> list[ShardInfo]:
    """All shards of `sources` in this epoch's order (the same on every rank and worker)."""
    shards = [shard for source in sources for shard in source.shards]
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(len(shards))
        shards = [shards[i] for i in order]
    return shards


def _part_records(shards: list[ShardInfo], part: int, num_parts: int,
                  stats: StreamStats) -> Iterator[dict[str, Any]]:
    """This part's raw records: whole shards when there are enough, else every n-th sample."""
    if len(shards) >= num_parts:
        for shard in shards[part::num_parts]:
            yield from iter_shard_records(shard, stats)
        return
    index = 0
    for shard in shards:
        for record in iter_shard_records(shard, stats):
            if index % num_parts == part:
                yield record
            index += 1


def _buffer_shuffle(items: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = int(rng.integers(len(buffer)))
        yield buffer[slot]
        buffer[slot] = item
    order = rng.permutation(len(buffer))
    for slot in order:
        yield buffer[slot]


class ShardStream:
    """One epoch of samples for one (rank, worker); `position` counts records consumed.

    `start` skips that many records of the epoch's deterministic order without decoding them,
    which is how a checkpointed (epoch, position) resumes exactly.
    """

    def __init__(self, sources: Sequence[ShardSource], *, epoch: int, seed: int, rank: int = 0,
                 world_size: int = 1, worker_id: int = 0, num_workers: int = 1,
                 shuffle: bool = True, shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                 start: int = 0, stats: StreamStats | None = None) -> None:
        if not 0 <= rank < world_size or not 0 <= worker_id < num_workers:
            raise ValueError(f"rank {rank}/{world_size} or worker {worker_id}/{num_workers} "
                             "out of range")
        self.sources = list(sources)
        self.epoch, self.seed, self.shuffle = epoch, seed, shuffle
        self.part = rank * num_workers + worker_id
        self.num_parts = world_size * num_workers
        self.shuffle_buffer = max(int(shuffle_buffer), 1)
        self.position = int(start)
        self.delivered = 0  # samples this stream yielded (stats may be shared between streams)
        self.stats = stats if stats is not None else StreamStats()

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def __iter__(self) -> Iterator[Sample]:
        shards = epoch_shards(self.sources, epoch=self.epoch, seed=self.seed, shuffle=self.shuffle)
        records: Iterable[dict[str, Any]] = _part_records(shards, self.part, self.num_parts,
                                                          self.stats)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, self.part, 1])
            records = _buffer_shuffle(records, self.shuffle_buffer, rng)
        for index, record in enumerate(records):
            if index < self.position:
                continue
            self.position = index + 1
            try:
                sample = decode_sample(record)
            except ShardFormatError as error:
                self.stats.report(f"{record.get('__url__')}: skipped sample "
                                  f"{record.get('__key__')!r}: {error}", skipped=1)
                continue
            self.stats.samples += 1
            self.delivered += 1
            yield sample


def iter_samples(sources: Sequence[ShardSource], *, epoch: int, seed: int, rank: int = 0,
                 world_size: int = 1, worker_id: int = 0, num_workers: int = 1,
                 shuffle: bool = True, shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                 start: int = 0, stats: StreamStats | None = None) -> Iterator[Sample]:
    """One epoch of `Sample`s for this (rank, worker); see `ShardStream`."""
    return iter(ShardStream(sources, epoch=epoch, seed=seed, rank=rank, world_size=world_size,
                            worker_id=worker_id, num_workers=num_workers, shuffle=shuffle,
                            shuffle_buffer=shuffle_buffer, start=start, stats=stats))


class _CyclingStream:
    """Endless epochs over one dataset, resumable from {"epoch", "position"}."""

    def __init__(self, sources: Sequence[ShardSource], state: dict[str, int] | None,
                 **stream_args: Any) -> None:
        self.sources = list(sources)
        self.stream_args = stream_args
        state = state or {"epoch": 0, "position": 0}
        self.current = self._open(int(state["epoch"]), int(state["position"]))
        self.iterator = iter(self.current)

    def _open(self, epoch: int, start: int) -> ShardStream:
        return ShardStream(self.sources, epoch=epoch, start=start, **self.stream_args)

    def state(self) -> dict[str, int]:
        return self.current.state()

    def next(self) -> Sample:
        empty_epochs = 0
        while True:
            sample = next(self.iterator, None)
            if sample is not None:
                return sample
            empty_epochs = empty_epochs + 1 if self.current.delivered == 0 else 0
            if empty_epochs >= 2:
                names = ", ".join(s.url for s in self.sources)
                raise StreamError(f"no readable samples for this part in {names}")
            self.current = self._open(self.current.epoch + 1, 0)
            self.iterator = iter(self.current)


class MixedStream:
    """An endless stream mixing datasets by sample rates; `state()` resumes it exactly.

    `sources_with_rates` pairs a `ShardSource` (or a list of them, read as one dataset) with its
    rate. Draws use blocks of `MIX_BLOCK` choices seeded by (seed, rank, worker, block).
    """

    def __init__(self, sources_with_rates: Sequence[tuple[ShardSource | Sequence[ShardSource], float]],
                 *, seed: int, rank: int = 0, world_size: int = 1, worker_id: int = 0,
                 num_workers: int = 1, shuffle: bool = True,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                 state: dict[str, Any] | None = None) -> None:
        if not sources_with_rates:
            raise ValueError("MixedStream needs at least one dataset")
        rates = np.array([float(rate) for _, rate in sources_with_rates], dtype=np.float64)
        if (rates < 0).any() or rates.sum() <= 0:
            raise ValueError(f"sample rates must be non-negative with a positive sum, got {rates}")
        self.probabilities = rates / rates.sum()
        self.seed, self.rank, self.worker_id = seed, rank, worker_id
        self.stats = StreamStats()
        state = state or {}
        self.draws = int(state.get("draws", 0))
        saved = state.get("streams") or [None] * len(sources_with_rates)
        if len(saved) != len(sources_with_rates):
            raise ValueError("the saved MixedStream state names a different number of datasets")
        self.streams = [
            _CyclingStream(
                [group] if isinstance(group, ShardSource) else list(group), stream_state,
                seed=seed + index, rank=rank, world_size=world_size, worker_id=worker_id,
                num_workers=num_workers, shuffle=shuffle, shuffle_buffer=shuffle_buffer,
                stats=self.stats,
            )
            for index, ((group, _), stream_state) in enumerate(zip(sources_with_rates, saved,
                                                                   strict=True))
        ]
        self._block_index = -1
        self._block = np.empty(0, dtype=np.int64)

    def _choice(self, draw: int) -> int:
        block_index = draw // MIX_BLOCK
        if block_index != self._block_index:
            rng = np.random.default_rng([self.seed, self.rank, self.worker_id, block_index, 2])
            self._block = rng.choice(len(self.probabilities), size=MIX_BLOCK, p=self.probabilities)
            self._block_index = block_index
        return int(self._block[draw % MIX_BLOCK])

    def state(self) -> dict[str, Any]:
        return {"draws": self.draws, "streams": [s.state() for s in self.streams]}

    def __iter__(self) -> Iterator[Sample]:
        return self

    def __next__(self) -> Sample:
        sample = self.streams[self._choice(self.draws)].next()
        self.draws += 1
        return sample


def shard_paths(sources: Sequence[ShardSource]) -> tuple[list[str], Any]:
    """(paths, pyarrow filesystem) of every shard, as Ray Data wants them."""
    urls = [shard.url for source in sources for shard in source.shards]
    if not urls:
        raise StreamError("the sources hold no shards")
    if any(storage.is_s3(u) for u in urls) and not all(storage.is_s3(u) for u in urls):
        raise StreamError("mixing local and s3:// shard sources in one Ray dataset is unsupported")
    filesystem, _ = storage.resolve(urls[0])
    return [storage.resolve(u)[1] for u in urls], filesystem


def ray_dataset(sources: Sequence[ShardSource], **read_args: Any):
    """A Ray Dataset with one row per sample; members stay bytes (decode rows with `decode_row`)."""
    import ray.data

    paths, filesystem = shard_paths(sources)
    return ray.data.read_webdataset(paths, filesystem=filesystem, decoder=None, **read_args)


def decode_row(row: dict[str, Any]) -> Sample:
    """A Ray Data webdataset row -> `Sample` (raises `ShardFormatError` on a bad row)."""
    return decode_sample({k: v for k, v in row.items() if k != "__url__"})
