"""Building shards with Ray Data: contents, quarantine, readability, idempotence, crash recovery,
and the same build on a local S3 endpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_shard_format import assert_same_sample

from dataset_builders.reason_seg import iter_reason_seg
from dataset_builders.refer import iter_refer
from dataset_builders.sample import Sample
from pipelines import storage
from pipelines.build_shards import (
    assign_shards,
    build_shards,
    input_fingerprint,
    plan_read_tasks,
)
from pipelines.shard_format import MANIFEST_NAME
from pipelines.streaming import ShardSource, decode_row, iter_samples, ray_dataset

SHARD_MB = 0.05  # ~50 KB shards: the synthetic splits span several shards


def test_assign_shards_packs_sorted_keys_by_size():
    keys = ["c", "a", "d", "b"]
    assert assign_shards(keys, [40, 40, 40, 40], 100) == [1, 0, 1, 0]
    assert assign_shards(["a"], [500], 100) == [0]  # an oversized sample gets its own shard
    assert assign_shards([], [], 100) == []


def test_input_fingerprint_sees_changed_files(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    before = input_fingerprint([tmp_path])
    assert input_fingerprint([tmp_path]) == before
    (tmp_path / "a.json").write_text('{"x": 1}')
    assert input_fingerprint([tmp_path]) != before


def test_reason_seg_records_are_dealt_to_parts(synthetic_root):
    tasks = plan_read_tasks(str(synthetic_root), "reason_seg", "train", num_parts=3)
    stems = [stem for task in tasks for _, stem, _ in task["records"]]
    expected = sorted(p.stem for p in (synthetic_root / "reason_seg/ReasonSeg/train").glob("*.jpg"))
    assert sorted(stems) == expected and len(tasks) == min(3, len(expected))


@pytest.fixture(scope="module")
def damaged_root(synthetic_root, tmp_path_factory) -> tuple[Path, set[str]]:
    """A copy of the synthetic tree with two bad ReasonSeg records."""
    root = tmp_path_factory.mktemp("damaged")
    shutil.copytree(synthetic_root / "reason_seg", root / "reason_seg")
    shutil.copytree(synthetic_root / "refer_seg", root / "refer_seg")
    train = root / "reason_seg" / "ReasonSeg" / "train"
    stems = sorted(p.stem for p in train.glob("*.jpg"))
    (train / f"{stems[0]}.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    anno = json.loads((train / f"{stems[1]}.json").read_text())
    anno["shapes"][0]["points"][0] = [None, 1.0]  # upstream's int32 cast fails on it
    (train / f"{stems[1]}.json").write_text(json.dumps(anno))
    return root, {stems[0], stems[1]}


def _reader_samples(root: Path, dataset: str, split: str) -> list[Sample]:
    items = (iter_reason_seg(root, split) if dataset == "reason_seg"
             else iter_refer(root, dataset, split))
    return sorted((s for s in items if isinstance(s, Sample)), key=lambda s: s.key)


def _listing(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


@pytest.mark.integration
def test_build_round_trip_idempotence_and_crash_recovery(ray_local, damaged_root, tmp_path):
    import webdataset as wds

    root, bad_stems = damaged_root
    out = tmp_path / "shards"
    reports = build_shards(str(root), str(out), datasets=["reason_seg", "refcoco"],
                           splits=["train", "val"], shard_size_mb=SHARD_MB)
    assert [(r.dataset, r.split, r.status) for r in reports] == [
        ("reason_seg", "train", "built"), ("reason_seg", "val", "built"),
        ("refcoco", "train", "built"), ("refcoco", "val", "built")]

    # quarantined records are listed with reasons; every good record arrives, identical
    train = ShardSource(str(out / "reason_seg" / "train"))
    assert {q["record_id"] for q in train.manifest["quarantine"]} == bad_stems
    assert all(q["reason"] and q["source"] for q in train.manifest["quarantine"])
    for dataset, split in [("reason_seg", "train"), ("refcoco", "train"), ("refcoco", "val")]:
        source = ShardSource(str(out / dataset / split))
        expected = _reader_samples(root, dataset, split)
        read = sorted(iter_samples([source], epoch=0, seed=0), key=lambda s: s.key)
        assert source.num_samples == len(expected) == len(read) > 0
        for want, got in zip(expected, read, strict=True):
            assert_same_sample(want, got)
    refcoco = ShardSource(str(out / "refcoco" / "train"))
    assert len(refcoco.shards) > 1  # small shard size -> several shards
    read = list(iter_samples([refcoco], epoch=0, seed=0))

    # the tars are standard: plain webdataset and Ray Data read them
    urls = [s.url for s in refcoco.shards]
    plain = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert sorted(s["__key__"] for s in plain) == sorted(s.key for s in read)
    assert_same_sample(_by_key(read, plain[0]["__key__"]), _decode_plain(plain[0]))
    rows = ray_dataset([refcoco]).take_all()
    assert sorted(decode_row(r).key for r in rows) == sorted(s.key for s in read)

    # a re-run with the same inputs writes nothing
    folders = [out / "reason_seg" / "train", out / "refcoco" / "train"]
    before = [_listing(f) for f in folders]
    again = build_shards(str(root), str(out), datasets=["reason_seg", "refcoco"],
                         splits=["train", "val"], shard_size_mb=SHARD_MB)
    assert {r.status for r in again} == {"up-to-date"}
    assert [_listing(f) for f in folders] == before

    # crash: manifest gone, a half-written shard, a stray shard and a temp file
    folder = folders[1]
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    (folder / MANIFEST_NAME).unlink()
    first = folder / manifest["shards"][0]["name"]
    first.write_bytes(first.read_bytes()[:700])
    (folder / "shard-000999.tar").write_bytes(b"stray")
    (folder / f"shard-000000.tar{storage.TMP_MARKER}dead").write_bytes(b"partial")
    with pytest.raises(Exception, match=r"manifest\.json"):
        ShardSource(str(folder))  # no manifest: readers refuse the half-built folder
    build_shards(str(root), str(out), datasets=["refcoco"], splits=["train"],
                 shard_size_mb=SHARD_MB)
    rebuilt = json.loads((folder / MANIFEST_NAME).read_text())
    assert rebuilt["shards"] == manifest["shards"]
    assert rebuilt["content_hash"] == manifest["content_hash"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [MANIFEST_NAME] + [s["name"] for s in manifest["shards"]])


def _by_key(samples: list[Sample], key: str) -> Sample:
    return next(s for s in samples if s.key == key)


def _decode_plain(record: dict) -> Sample:
    from pipelines.shard_format import decode_sample

    return decode_sample({k: v for k, v in record.items() if not k.startswith("__") or k == "__key__"})


@pytest.mark.integration
def test_build_to_s3_round_trip_and_idempotence(ray_local, s3_server, synthetic_root):
    import boto3

    out = s3_server.url("build-test")
    reports = build_shards(str(synthetic_root), out, datasets=["reason_seg"], splits=["train"],
                           shard_size_mb=SHARD_MB)
    assert reports[0].status == "built" and reports[0].num_samples > 0
    source = ShardSource(storage.join(out, "reason_seg", "train"))
    read = sorted(iter_samples([source], epoch=0, seed=0), key=lambda s: s.key)
    expected = _reader_samples(synthetic_root, "reason_seg", "train")
    assert [s.key for s in read] == [s.key for s in expected]
    for want, got in zip(expected, read, strict=True):
        assert_same_sample(want, got)

    client = boto3.client("s3", endpoint_url=s3_server.endpoint_url)

    def objects() -> dict[str, tuple[str, object]]:
        listed = client.list_objects_v2(Bucket=s3_server.bucket, Prefix="build-test/")
        return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listed.get("Contents", [])}

    rows = ray_dataset([source]).take_all()  # Ray Data reads the same shards from S3
    assert sorted(decode_row(r).key for r in rows) == [s.key for s in expected]

    before = objects()
    assert len(before) == len(source.shards) + 1
    again = build_shards(str(synthetic_root), out, datasets=["reason_seg"], splits=["train"],
                         shard_size_mb=SHARD_MB)
    assert again[0].status == "up-to-date"
    assert objects() == before
