"""The shard reader: round trip, deterministic shuffling, rank/worker splits, resume, mixing,
and damaged shards that are reported and skipped while the good samples still arrive."""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from test_shard_format import assert_same_sample, make_sample

from pipelines.build_shards import write_samples
from pipelines.streaming import (
    MixedStream,
    ShardSource,
    ShardStream,
    StreamError,
    StreamStats,
    iter_samples,
)

SMALL_SHARD_MB = 0.004  # ~4 KB: a few samples per shard, so folders have many shards


def make_folder(tmp_path: Path, name: str, count: int, *, first: int = 0,
                shard_size_mb: float = SMALL_SHARD_MB) -> tuple[ShardSource, list]:
    samples = [make_sample(first + i) for i in range(count)]
    for sample in samples:
        sample.dataset = name
        sample.key = f"{name}_train_{sample.key.rsplit('_', 1)[1]}"
    folder = tmp_path / name / "train"
    write_samples(samples, str(folder), dataset=name, split="train", shard_size_mb=shard_size_mb)
    return ShardSource(str(folder)), samples


def keys(samples) -> list[str]:
    return [s.key for s in samples]


def test_round_trip_identical_masks_and_queries(tmp_path):
    source, samples = make_folder(tmp_path, "toy", 12)
    assert len(source.shards) > 2 and source.num_samples == 12
    assert len(source.content_hash) == 64
    read = list(iter_samples([source], epoch=0, seed=0, shuffle=False))
    assert keys(read) == sorted(keys(samples))
    for original, decoded in zip(sorted(samples, key=lambda s: s.key), read, strict=True):
        assert_same_sample(original, decoded)


def test_shuffling_is_deterministic_per_epoch(tmp_path):
    source, samples = make_folder(tmp_path, "toy", 20)

    def order(epoch, seed=1):
        return keys(iter_samples([source], epoch=epoch, seed=seed, shuffle_buffer=8))

    assert order(0) == order(0)
    assert order(0) != order(1) and order(0) != order(0, seed=2)
    assert sorted(order(1)) == sorted(keys(samples))


@pytest.mark.parametrize("count", [1, 20])  # 1 sample: fewer shards than parts -> sample split
def test_split_by_rank_and_worker_covers_each_sample_once(tmp_path, count):
    source, samples = make_folder(tmp_path, "toy", count)
    for epoch in (0, 1):
        seen = Counter()
        for rank in range(2):
            for worker in range(2):
                seen.update(keys(iter_samples([source], epoch=epoch, seed=5, rank=rank,
                                              world_size=2, worker_id=worker, num_workers=2)))
        assert seen == Counter(keys(samples))


def test_resume_continues_exactly(tmp_path):
    source, _ = make_folder(tmp_path, "toy", 15)
    full = keys(iter_samples([source], epoch=3, seed=9, shuffle_buffer=4))
    stream = ShardStream([source], epoch=3, seed=9, shuffle_buffer=4)
    iterator = iter(stream)
    head = [next(iterator).key for _ in range(6)]
    state = stream.state()
    resumed = ShardStream([source], epoch=state["epoch"], seed=9, shuffle_buffer=4,
                          start=state["position"])
    assert head + keys(resumed) == full


def test_mixing_converges_to_rates_and_resumes(tmp_path):
    big, _ = make_folder(tmp_path, "big", 6)
    small, _ = make_folder(tmp_path, "small", 3, first=100)
    mixed = MixedStream([(big, 3.0), (small, 1.0)], seed=0, shuffle_buffer=4)
    draws = [next(mixed).dataset for _ in range(2000)]
    share = draws.count("big") / len(draws)
    assert abs(share - 0.75) < 0.03  # each dataset cycles on its own through many epochs
    state = mixed.state()
    expected = [next(mixed).key for _ in range(40)]
    resumed = MixedStream([(big, 3.0), (small, 1.0)], seed=0, shuffle_buffer=4, state=state)
    assert [next(resumed).key for _ in range(40)] == expected


def test_missing_manifest_or_shard_is_refused(tmp_path):
    with pytest.raises(StreamError, match=r"manifest\.json"):
        ShardSource(str(tmp_path / "nothing"))
    source, _ = make_folder(tmp_path, "toy", 8)
    Path(source.shards[0].url).unlink()
    with pytest.raises(StreamError, match="missing"):
        ShardSource(source.url)


def test_truncated_shard_is_reported_and_skipped(tmp_path):
    source, samples = make_folder(tmp_path, "toy", 12)
    victim = Path(source.shards[1].url)
    data = victim.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
    victim.write_bytes(data[: last.offset_data + last.size // 2])  # cut inside a member
    stats = StreamStats()
    read = keys(iter_samples([ShardSource(source.url)], epoch=0, seed=0, stats=stats))
    lost = source.shards[1].num_samples
    assert stats.damaged_shards == 1 and stats.errors
    assert 12 - lost <= len(read) < 12 and len(set(read)) == len(read)
    other_shards = {s.key for s in samples} - set(_shard_keys(data))
    assert other_shards <= set(read)  # every sample of the intact shards arrives


def test_corrupt_member_is_counted_and_skipped(tmp_path):
    source, samples = make_folder(tmp_path, "toy", 6, shard_size_mb=1.0)
    shard = Path(source.shards[0].url)
    data = bytearray(shard.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".masks.png"))
    data[member.offset_data: member.offset_data + 16] = b"\0" * 16  # same size, broken PNG
    shard.write_bytes(bytes(data))
    stats = StreamStats()
    read = keys(iter_samples([ShardSource(source.url)], epoch=0, seed=0, stats=stats))
    broken = member.name.split(".")[0]
    assert sorted(read) == sorted(k for k in keys(samples) if k != broken)
    assert stats.skipped_samples == 1 and stats.samples == 5
    assert any("sha256" in e for e in stats.errors) and any(broken in e for e in stats.errors)


def _shard_keys(data: bytes) -> list[str]:
    keys_found = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for name in tar.getnames():
            if name.endswith(".json"):
                keys_found.append(name.split(".")[0])
    return keys_found
