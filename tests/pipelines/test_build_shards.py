"""Building shards with Ray: contents, quarantine, readability, shard counts, idempotence,
immutable versions behind a pointer, dataset-level failures that publish nothing, the same
build from an s3:// root to S3."""

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
from pipelines.build_shards import BuildError, BuildOptions, build_shards, main, pack
from pipelines.ingestion.ray_rows import decode_row, ray_dataset
from pipelines.ingestion.sequential import rank_samples
from pipelines.shard_sets import POINTER_NAME, ShardSetError, resolve

SHARD_MB = 0.05  # ~50 KB shards: the synthetic splits span several shards


def test_pack_cuts_at_least_min_shards_balanced_by_size():
    assert pack([40, 40, 40, 40], 100, 1) == [(0, 2), (2, 4)]
    assert pack([10] * 9, 10_000, 3) == [(0, 3), (3, 6), (6, 9)]  # min_shards wins over size
    assert pack([500], 100, 4) == [(0, 1)]  # never more shards than records
    assert pack([], 100, 2) == []
    bounds = pack([1, 1, 1, 100, 1, 1], 1_000, 3)
    assert len(bounds) == 3 and bounds[0][0] == 0 and bounds[-1][1] == 6


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


def _files(folder: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


@pytest.mark.integration
def test_build_round_trip_versions_and_idempotence(ray_local, damaged_root, tmp_path):
    import webdataset as wds

    root, bad_stems = damaged_root
    out = str(tmp_path / "shards")
    lenient = BuildOptions(shard_size_mb=SHARD_MB, min_shards=3, max_quarantine_fraction=0.5)
    reports = build_shards(str(root), out, datasets=["reason_seg", "refcoco"],
                           splits=["train", "val"], options=lenient)
    assert [(r.dataset, r.split, r.status) for r in reports] == [
        ("reason_seg", "train", "built"), ("reason_seg", "val", "built"),
        ("refcoco", "train", "built"), ("refcoco", "val", "built")]

    # quarantined records are listed with reasons; every good record arrives, identical
    train = resolve(out, "reason_seg/train")
    assert {q.record_id for q in train.manifest.quarantine} == bad_stems
    assert all(q.reason and q.source for q in train.manifest.quarantine)
    for dataset, split in [("reason_seg", "train"), ("refcoco", "train"), ("refcoco", "val")]:
        shard_set = resolve(out, f"{dataset}/{split}")
        expected = _reader_samples(root, dataset, split)
        read = list(rank_samples([shard_set]))
        assert [s.key for s in read] == [s.key for s in expected]  # key order = manifest order
        for want, got in zip(expected, read, strict=True):
            assert_same_sample(want, got)
    refcoco = resolve(out, "refcoco/train")
    assert len(refcoco.manifest.shards) >= 3 and refcoco.manifest.min_shards == 3
    keys = [s.key for s in rank_samples([refcoco])]
    assert keys == sorted(keys) and all(k.rsplit("_", 1)[1].isdigit() and
                                        len(k.rsplit("_", 1)[1]) == 12 for k in keys)

    # the tars are standard: plain webdataset and Ray Data read them
    urls = [refcoco.shard_url(e.name) for e in refcoco.manifest.shards]
    plain = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert sorted(s["__key__"] for s in plain) == keys
    rows = ray_dataset([refcoco]).take_all()
    assert sorted(decode_row(r).key for r in rows) == keys

    # a re-run with the same inputs writes nothing
    before = {name: _files(resolve(out, name).url) for name in ("reason_seg/train",
                                                                "refcoco/train")}
    again = build_shards(str(root), out, datasets=["reason_seg", "refcoco"],
                         splits=["train", "val"], options=lenient)
    assert {r.status for r in again} == {"up-to-date"}
    assert {name: _files(resolve(out, name).url) for name in before} == before

    # changed inputs: a new version; the old one is untouched, the pointer moved last
    stems = sorted(p.stem for p in (root / "reason_seg/ReasonSeg/train").glob("*.json"))
    (root / "reason_seg/ReasonSeg/train" / f"{stems[-1]}.json").unlink()
    (root / "reason_seg/ReasonSeg/train" / f"{stems[-1]}.jpg").unlink()
    [rebuilt] = build_shards(str(root), out, datasets=["reason_seg"], splits=["train"],
                             options=lenient)
    assert rebuilt.status == "built" and rebuilt.version != train.version
    assert resolve(out, "reason_seg/train").version == rebuilt.version
    assert _files(train.url) == before["reason_seg/train"]
    assert rebuilt.num_samples == train.manifest.num_samples - 1


@pytest.mark.integration
def test_too_much_quarantine_fails_and_publishes_nothing(ray_local, damaged_root, tmp_path,
                                                         capsys):
    root, _ = damaged_root
    out = tmp_path / "shards"
    code = main(["--dataset-root", str(root), "--out", str(out), "--datasets", "reason_seg",
                 "--splits", "train", "--shard-size-mb", str(SHARD_MB)])  # default 1%
    err = capsys.readouterr().err
    assert code == 1
    assert "reason_seg/train: 2 of" in err and "--max-quarantine-fraction" in err
    assert "quarantined 1: image does not decode" in err
    assert not (out / "reason_seg" / "train" / POINTER_NAME).exists()
    with pytest.raises(ShardSetError, match="no shards at"):
        resolve(str(out), "reason_seg/train")


def _refer_copy(synthetic_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    shutil.copytree(synthetic_root / "refer_seg", root / "refer_seg")
    return root


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("true",))


def _break_pickle(root: Path) -> str:
    import pickle

    path = root / "refer_seg/refcoco/refs(unc).p"
    with open(path, "wb") as handle:
        pickle.dump([{"ref_id": 1, "split": "train", "x": _Payload()}], handle, protocol=2)
    return "refused: opcode"


def _truncate_pickle(root: Path) -> str:
    path = root / "refer_seg/refcoco/refs(unc).p"
    path.write_bytes(path.read_bytes()[:100])
    return "not a readable pickle"


def _drop_instances(root: Path) -> str:
    (root / "refer_seg/refcoco/instances.json").unlink()
    return "instances file not found"


def _drop_images(root: Path) -> str:
    shutil.rmtree(root / "refer_seg/images/mscoco/images/train2014")
    return "image folder not found"


@pytest.mark.parametrize("damage", [_break_pickle, _truncate_pickle, _drop_instances,
                                    _drop_images])
def test_dataset_level_failures_exit_before_ray_naming_the_file(synthetic_root, tmp_path,
                                                                capsys, damage):
    import ray

    root = _refer_copy(synthetic_root, tmp_path)
    fragment = damage(root)
    out = tmp_path / "shards"
    started = ray.is_initialized()
    code = main(["--dataset-root", str(root), "--out", str(out), "--datasets", "refcoco"])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and str(root) in err
    assert ray.is_initialized() == started  # the cheap checks ran before any Ray start
    assert not out.exists() or not any(out.rglob(POINTER_NAME))


def test_unreadable_root_and_missing_split_are_named(tmp_path, capsys):
    assert main(["--dataset-root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "nope is not a readable folder" in capsys.readouterr().err
    (tmp_path / "raw" / "reason_seg" / "ReasonSeg" / "train").mkdir(parents=True)
    assert main(["--dataset-root", str(tmp_path / "raw"), "--out", str(tmp_path / "o"),
                 "--splits", "val"]) == 2
    assert "ReasonSeg split folder not found" in capsys.readouterr().err


@pytest.mark.integration
def test_malformed_instances_fails_the_build_and_publishes_nothing(ray_local, synthetic_root,
                                                                   tmp_path, capsys):
    root = _refer_copy(synthetic_root, tmp_path)
    (root / "refer_seg/refcoco/instances.json").write_text('{"images": [}')
    out = tmp_path / "shards"
    code = main(["--dataset-root", str(root), "--out", str(out), "--datasets", "refcoco",
                 "--splits", "train", "val"])
    err = capsys.readouterr().err
    assert code == 1 and "not a COCO instances file" in err and "instances.json" in err
    assert not any(out.rglob(POINTER_NAME))
    with pytest.raises(BuildError):
        build_shards(str(root), str(out), datasets=["refcoco"], splits=["val"])


@pytest.mark.integration
def test_build_from_s3_root_to_s3(ray_local, s3_server, synthetic_root):
    """Raw inputs under s3:// (read by tasks that stage just their files), shards to S3."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server.endpoint_url)
    raw = "raw-test"
    for path in sorted(synthetic_root.rglob("*")):
        relative = path.relative_to(synthetic_root).as_posix()
        if path.is_file() and relative.startswith(("reason_seg/ReasonSeg/val",
                                                   "refer_seg/refcoco/", "refer_seg/images")):
            client.upload_file(str(path), s3_server.bucket, f"{raw}/{relative}")
    out = s3_server.url("build-test")
    options = BuildOptions(shard_size_mb=SHARD_MB, min_shards=2)
    reports = build_shards(s3_server.url(raw), out, sets=["reason_seg/val", "refcoco/val"],
                           options=options)
    assert [r.status for r in reports] == ["built", "built"]
    for name in ("reason_seg/val", "refcoco/val"):
        dataset, split = name.split("/")
        shard_set = resolve(out, name)
        expected = _reader_samples(synthetic_root, dataset, split)
        read = list(rank_samples([shard_set]))
        assert [s.key for s in read] == [s.key for s in expected]
        for want, got in zip(expected, read, strict=True):
            local = want.source["image"]
            assert got.source["image"] == local.replace(f"{synthetic_root}/",
                                                        f"{s3_server.url(raw)}/")
            want.source = got.source  # provenance names the s3:// object, the rest is equal
            assert_same_sample(want, got)
    listed = {e.name for e in storage.list_files(storage.join(out, "refcoco", "val"))}
    assert listed == {POINTER_NAME}
    again = build_shards(s3_server.url(raw), out, sets=["reason_seg/val", "refcoco/val"],
                         options=options)
    assert {r.status for r in again} == {"up-to-date"}


def test_a_shard_task_on_a_node_without_the_raw_data_fails_the_build_by_name(synthetic_root,
                                                                            tmp_path):
    """What a read task does on a node that cannot see a local root (`--shared-root` claimed a
    mount that is not there): a dataset-level failure naming the folder and the node, never a
    quarantine of every record. Run in-process with a root that this "node" lacks."""
    from pipelines.build_shards import plan_folder, write_shard

    absent = tmp_path / "not-mounted-here"
    planned = plan_folder(str(absent), "reason_seg", "train", "")
    assert planned["records"] == [] and planned["quarantine"] == []
    assert "is not visible on node" in planned["fatal"] and str(absent) in planned["fatal"]
    written = write_shard(str(absent), "reason_seg", "train", "", str(tmp_path / "out"),
                          "shard-000000.tar", ["train/x"])
    assert written["entry"] is None and "is not visible on node" in written["fatal"]
    assert not (tmp_path / "out").exists()
    # The same calls on the root that exists plan its records.
    present = plan_folder(str(synthetic_root), "reason_seg", "train", "")
    assert present["fatal"] is None and present["records"]
