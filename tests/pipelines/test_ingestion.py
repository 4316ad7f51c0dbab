"""Training ingestion: parts read their own shards, deterministic order, rate mixing, resume
(exact with the same world size, no sample repeated or skipped with another), prefetched
batches never counted as consumed, damaged shards excluded whole and named, corrupt members
counted and skipped."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from test_shard_format import make_sample

from pipelines.build_shards import write_samples
from pipelines.ingestion.loader import LoaderOptions, TrainBatches, pinned_shard_sets
from pipelines.ingestion.plan import Layout, fresh_deal, initial_state
from pipelines.ingestion.sequential import rank_samples
from pipelines.ingestion.stream import PartStream
from pipelines.integrity import DamagedShardError, IntegrityReport
from pipelines.manifest import Manifest, read_manifest, write_manifest
from pipelines.shard_sets import resolve

SMALL_SHARD_MB = 0.004  # ~4 KB: two samples per shard, so sets have many shards


def make_set(root: Path, name: str, count: int, *, first: int = 0,
             shard_size_mb: float = SMALL_SHARD_MB):
    samples = [make_sample(first + i) for i in range(count)]
    for sample in samples:
        sample.dataset = name
        sample.key = f"{name}_train_{sample.key.rsplit('_', 1)[1]}"
    write_samples(samples, str(root / name / "train"), dataset=name, split="train",
                  shard_size_mb=shard_size_mb)
    return resolve(str(root), f"{name}/train"), sorted(s.key for s in samples)


def options(**overrides) -> LoaderOptions:
    base = {"batch_size": 2, "seed": 3, "rates": (1.0,), "num_per_sample": 1,
            "true_premise_prob": 0.85, "loader_workers": 0, "prefetch_batches": 2}
    return LoaderOptions(**{**base, **overrides})


def loaders(sets, opts, world_size, restored=None):
    return [TrainBatches(sets, opts, rank=r, world_size=world_size, collate=len,
                         restored=restored) for r in range(world_size)]


def take(batches: TrainBatches, count: int) -> list[tuple[str, int, int]]:
    seen = []
    for _ in range(count):
        next(batches)
        seen += batches.last_samples
    return seen


def until_epoch(batches: list[TrainBatches], dataset: int, epoch: int,
                limit: int = 200) -> list[tuple[str, int, int]]:
    """Batches from every rank (round-robin) until each has delivered `epoch` of `dataset`."""
    seen: list[tuple[str, int, int]] = []
    done = [False] * len(batches)
    for _ in range(limit):
        for index, loader in enumerate(batches):
            if done[index]:
                continue
            got = take(loader, 1)
            seen += got
            done[index] = any(d == dataset and e >= epoch for _, d, e in got)
        if all(done):
            return seen
    raise AssertionError("the loaders never reached the next epoch")


def epoch_keys(seen, dataset: int = 0, epoch: int = 0) -> Counter:
    return Counter(k for k, d, e in seen if d == dataset and e == epoch)


@pytest.mark.parametrize(("count", "shard_mb", "parts"), [(20, SMALL_SHARD_MB, 4), (5, 1.0, 3)])
def test_parts_cover_each_sample_once_per_epoch(tmp_path, count, shard_mb, parts):
    """Whole shards per part, or (fewer shards than parts) strided units of one shard."""
    shard_set, keys = make_set(tmp_path, "toy", count, shard_size_mb=shard_mb)
    state = initial_state([Layout("toy/train", tuple(e.num_samples for e in
                                                     shard_set.manifest.shards))],
                          seed=5, num_parts=parts)
    for epoch in (0, 1):
        seen = Counter()
        for part in range(parts):
            stream = PartStream([shard_set], [1.0], state=state, part=part)
            while True:
                drawn = next(stream)
                if drawn.ref.epoch > epoch:
                    break
                if drawn.ref.epoch == epoch:
                    seen[drawn.sample.key] += 1
        assert seen == Counter(keys)
    deal = fresh_deal(len(shard_set.manifest.shards), parts)
    assert sorted(Counter(deal.owner).values())[0] >= 1  # every part owns a unit


def test_order_is_deterministic_per_seed(tmp_path):
    shard_set, _ = make_set(tmp_path, "toy", 16)
    first = take(loaders([shard_set], options(), 1)[0], 6)
    assert first == take(loaders([shard_set], options(), 1)[0], 6)
    assert first != take(loaders([shard_set], options(seed=4), 1)[0], 6)


def test_rates_mix_datasets(tmp_path):
    big, _ = make_set(tmp_path, "big", 6)
    small, _ = make_set(tmp_path, "small", 3, first=100)
    state = initial_state([Layout(s.name, tuple(e.num_samples for e in s.manifest.shards))
                           for s in (big, small)], seed=0, num_parts=1)
    stream = PartStream([big, small], [3.0, 1.0], state=state, part=0)
    draws = [next(stream).ref.dataset_index for _ in range(2000)]
    assert abs(draws.count(0) / len(draws) - 0.75) < 0.03  # each set cycles its own epochs


@pytest.mark.parametrize("workers", [0, 2])
def test_same_world_size_resume_continues_exactly(tmp_path, workers):
    """With loader processes, batches prefetched past the checkpoint are not counted."""
    big, _ = make_set(tmp_path, "big", 14)
    small, _ = make_set(tmp_path, "small", 5, first=100)
    opts = options(loader_workers=workers, rates=(2.0, 1.0))
    [running] = loaders([big, small], opts, 1)
    take(running, 3)
    saved = running.state()
    expected = take(running, 5)
    running.close()
    [resumed] = loaders([big, small], opts, 1, restored=[saved])
    assert take(resumed, 5) == expected
    resumed.close()


@pytest.mark.parametrize(("before", "after", "workers"), [(2, 1, 0), (1, 2, 0), (1, 2, 1)])
def test_elastic_resume_neither_repeats_nor_skips(tmp_path, before, after, workers):
    """2 -> 1 and 1 -> 2 ranks: the epoch in progress ends with every sample exactly once."""
    big, big_keys = make_set(tmp_path, "big", 18)
    small, small_keys = make_set(tmp_path, "small", 5, first=100)
    opts = options(loader_workers=workers, rates=(3.0, 1.0))
    first = loaders([big, small], opts, before)
    seen = [item for loader in first for item in take(loader, 2)]
    states = [loader.state() for loader in first]
    for loader in first:
        loader.close()
    assert 0 < sum(epoch_keys(seen).values()) < len(big_keys)  # stopped mid-epoch
    second = loaders([big, small], opts, after, restored=states)
    seen += until_epoch(second, dataset=0, epoch=1)
    for loader in second:
        loader.close()
    assert epoch_keys(seen, 0, 0) == Counter(big_keys)
    small_epochs = max(e for _, d, e in seen if d == 1)
    for epoch in range(small_epochs):  # the smaller set's finished epochs are exact too
        assert epoch_keys(seen, 1, epoch) == Counter(small_keys)


def _flip_byte(path: Path, offset: int = 600) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_shards_are_excluded_whole_and_named(tmp_path):
    shard_set, keys = make_set(tmp_path, "toy", 12)
    flipped = shard_set.manifest.shards[1]
    _flip_byte(Path(shard_set.shard_url(flipped.name)))
    truncated = shard_set.manifest.shards[3]
    path = Path(shard_set.shard_url(truncated.name))
    path.write_bytes(path.read_bytes()[:700])
    [batches] = loaders([shard_set], options(max_damaged_fraction=0.5), 1)
    seen = until_epoch([batches], dataset=0, epoch=1)
    lost = flipped.num_samples + truncated.num_samples
    assert len(epoch_keys(seen)) == len(keys) - lost and max(epoch_keys(seen).values()) == 1
    report = batches.report()
    assert set(report.damaged) == {shard_set.shard_url(flipped.name),
                                   shard_set.shard_url(truncated.name)}
    assert "sha256" in report.damaged[shard_set.shard_url(flipped.name)]
    assert "unreadable" in report.damaged[shard_set.shard_url(truncated.name)]
    assert shard_set.shard_url(flipped.name) not in report.consumed
    assert report.consumed[shard_set.shard_url(shard_set.manifest.shards[0].name)] == \
        shard_set.manifest.shards[0].sha256
    assert batches.metrics()["data/damaged_shards"] == 2.0

    with pytest.raises(DamagedShardError, match=flipped.name):
        until_epoch(loaders([shard_set], options(policy="fail"), 1), dataset=0, epoch=1)
    with pytest.raises(DamagedShardError, match=r"above data\.max_damaged_shard_fraction"):
        until_epoch(loaders([shard_set], options(), 1), 0, 1)  # default limit: 5%


def test_corrupt_member_of_an_intact_shard_is_counted_and_skipped(tmp_path):
    """A shard whose bytes match its manifest but hold an undecodable sample (a writer bug)."""
    shard_set, keys = make_set(tmp_path, "toy", 6, shard_size_mb=1.0)
    entry = shard_set.manifest.shards[0]
    path = Path(shard_set.shard_url(entry.name))
    data = bytearray(path.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".masks.png"))
    data[member.offset_data: member.offset_data + 16] = b"\0" * 16
    path.write_bytes(bytes(data))
    import hashlib

    manifest = read_manifest(shard_set.url)
    fixed = type(entry)(entry.name, entry.num_samples, hashlib.sha256(bytes(data)).hexdigest(),
                        len(data), entry.num_queries)
    write_manifest(shard_set.url, Manifest(manifest.dataset, manifest.split, (fixed,)))
    report = IntegrityReport()
    read = [s.key for s in rank_samples([resolve_from(shard_set)], report=report)]
    broken = member.name.split(".")[0]
    assert sorted(read) == [k for k in keys if k != broken]
    assert report.skipped_samples == 1 and not report.damaged


def resolve_from(shard_set):
    from pipelines.shard_sets import open_version

    return open_version(shard_set.url, name=shard_set.name)


def test_validation_splits_every_sample_once_between_ranks(tmp_path):
    shard_set, keys = make_set(tmp_path, "toy", 9)
    single, _ = make_set(tmp_path, "one", 3, first=50, shard_size_mb=1.0)  # 1 shard, 2 ranks
    for sets, expected in (([shard_set], keys), ([single], None)):
        parts = [[s.key for s in rank_samples(sets, rank=r, world_size=2)] for r in range(2)]
        everything = sorted(parts[0] + parts[1])
        assert len(set(everything)) == len(everything)
        if expected:
            assert everything == expected
        else:
            assert len(everything) == 3 and parts[0] and parts[1]


def test_a_rebuild_during_a_run_changes_nothing_it_reads(tmp_path):
    """The run keeps its resolved version; a resumed run reopens the version its checkpoint
    names, although the pointer has moved."""
    shard_set, keys = make_set(tmp_path, "toy", 10)
    [batches] = loaders([shard_set], options(), 1)
    seen = take(batches, 2)
    old_files = {p.name: p.read_bytes() for p in Path(shard_set.url).iterdir()}
    rebuilt, _ = make_set(tmp_path, "toy", 6, first=40)  # new content, pointer moves
    assert rebuilt.url != shard_set.url and resolve(str(tmp_path), "toy/train").url == rebuilt.url
    seen += until_epoch([batches], dataset=0, epoch=1)
    assert set(epoch_keys(seen)) == set(keys)
    assert {p.name: p.read_bytes() for p in Path(shard_set.url).iterdir()} == old_files
    state = json.loads(json.dumps(batches.state()))  # as a checkpoint stores it
    pinned = pinned_shard_sets([resolve(str(tmp_path), "toy/train")], [state])
    assert pinned[0].url == shard_set.url
    assert {k for k, _, _ in take(loaders(pinned, options(), 1, [state])[0], 3)} <= set(keys)


@pytest.mark.integration
def test_s3_shards_are_cached_on_the_node_and_reused(s3_server, tmp_path):
    import boto3

    from pipelines.shard_reader import DamagedShard, ShardCache, read_shard

    samples = [make_sample(i) for i in range(4)]
    root = s3_server.url("cache-test")
    write_samples(samples, f"{root}/toy/train", dataset="toy", split="train")
    shard_set = resolve(root, "toy/train")
    entry = shard_set.manifest.shards[0]
    cache = ShardCache(tmp_path / "cache", max_bytes=10 * entry.bytes)
    first = read_shard(shard_set.shard_url(entry.name), entry, cache)
    cached = cache.path(entry.sha256)
    assert cached.is_file() and cached.stat().st_size == entry.bytes
    key = shard_set.shard_url(entry.name)[len(f"s3://{s3_server.bucket}/"):]
    boto3.client("s3", endpoint_url=s3_server.endpoint_url).delete_object(
        Bucket=s3_server.bucket, Key=key)
    assert read_shard(shard_set.shard_url(entry.name), entry, cache) == first  # from the node
    _flip_byte(cached)  # a damaged local copy is dropped and fetched again: gone, so named
    with pytest.raises(DamagedShard, match="cannot read"):
        read_shard(shard_set.shard_url(entry.name), entry, cache)
    assert not cached.exists()
