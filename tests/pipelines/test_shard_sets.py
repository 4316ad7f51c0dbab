"""The typed manifest and shard-set names: one reader, one writer, versions behind a pointer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_shard_format import make_sample

from dataset_builders.sample import QuarantineEntry
from pipelines.build_shards import write_samples
from pipelines.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    ShardEntry,
    read_manifest,
    write_manifest,
)
from pipelines.shard_sets import (
    POINTER_NAME,
    ShardSetError,
    current_version,
    parse_name,
    resolve,
)


def test_manifest_round_trips_and_refuses_inconsistency(tmp_path):
    manifest = Manifest("toy", "val", (ShardEntry("shard-000000.tar", 3, "a" * 64, 1024, 7),),
                        (QuarantineEntry("x.json", "x", "json parse error: ..."),),
                        fingerprint="f" * 64, shard_size_bytes=2048, min_shards=4)
    write_manifest(str(tmp_path), manifest)
    again = read_manifest(str(tmp_path))
    assert again == manifest and again.num_samples == 3 and again.num_queries == 7
    raw = json.loads((tmp_path / MANIFEST_NAME).read_text())
    raw["content_hash"] = "0" * 64
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="content_hash disagrees"):
        read_manifest(str(tmp_path))
    raw["schema"] = 3  # a later version than this reader knows
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="schema 3"):
        read_manifest(str(tmp_path))
    with pytest.raises(ManifestError, match="did not finish"):
        read_manifest(str(tmp_path / "absent"))


def test_names_not_paths(tmp_path):
    assert parse_name("refcoco+/testA") == ("refcoco+", "testA")
    for bad in ("artifacts/shards/reason_seg/val", "s3://b/reason_seg/val", "reason_seg",
                "../x/val"):
        with pytest.raises(ShardSetError, match="not a shard set name"):
            parse_name(bad)
    with pytest.raises(ShardSetError, match=f"{POINTER_NAME} missing"):
        resolve(str(tmp_path), "reason_seg/val")


def test_versions_pointer_and_relative_roots(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = write_samples([make_sample(i) for i in range(3)], "shards/toy/train",
                          dataset="toy", split="train")
    resolved = resolve("shards", "toy/train")  # a relative root resolves to absolute URLs
    assert Path(resolved.url).is_absolute() and resolved.version == first.version
    assert current_version("shards", "toy/train") == first.version
    second = write_samples([make_sample(i) for i in range(4)], "shards/toy/train",
                           dataset="toy", split="train")
    assert second.version != first.version
    assert resolve("shards", "toy/train").version == second.version
    assert read_manifest(resolved.url).num_samples == 3  # the old version is untouched
    resolved.check_files()
    Path(resolved.shard_url(resolved.manifest.shards[0].name)).unlink()
    with pytest.raises(ShardSetError, match="missing"):
        resolved.check_files()
