"""Bad input at the reader level: every record upstream's loaders would fail on is quarantined
with its reason (or, for a dataset-level file such as a malicious pickle, refused with a clear
error); records upstream accepts are kept, with a warning when something is unusual; every good
record still arrives unchanged."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from dataset_builders.reason_seg import iter_reason_seg
from dataset_builders.refer import ReferFormatError, iter_refer
from dataset_builders.safe_pickle import UnsafePickleError
from dataset_builders.sample import QuarantineEntry, Sample
from dataset_builders.synthetic import generate_dataset

ALL_REASON_SEG = "train_val_test"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    generate_dataset(root, seed=21, images=45)
    return root


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(pristine, copy)
    return copy


def _split(items) -> tuple[dict[str, Sample], list[QuarantineEntry]]:
    samples = {i.key: i for i in items if isinstance(i, Sample)}
    return samples, [i for i in items if isinstance(i, QuarantineEntry)]


def _same_sample(a: Sample, b: Sample) -> None:
    assert (a.key, a.image_bytes, a.width, a.height) == (b.key, b.image_bytes, b.width, b.height)
    assert len(a.targets) == len(b.targets)
    for ta, tb in zip(a.targets, b.targets, strict=True):
        np.testing.assert_array_equal(ta.mask, tb.mask)
        assert (ta.queries, ta.target_id) == (tb.queries, tb.target_id)


# ---------------------------------------------------------------- ReasonSeg


def _edit_json(path: Path, edit) -> None:
    anno = json.loads(path.read_text(encoding="utf-8"))
    edit(anno)
    path.write_text(json.dumps(anno), encoding="utf-8")


def _shift_out(anno: dict) -> None:
    anno["shapes"][0]["points"] = [
        [x + anno["imageWidth"] + 50, y] for x, y in anno["shapes"][0]["points"]
    ]


def _all_ignore(anno: dict) -> None:
    for shape in anno["shapes"]:
        shape["label"] = "ignore"


def test_reason_seg_bad_records_are_quarantined(pristine: Path, root: Path) -> None:
    folders = {f.name: f for f in (root / "reason_seg" / "ReasonSeg").iterdir()}
    records = sorted((p.parent.name, p.stem) for f in folders.values() for p in f.glob("*.json"))
    assert len(records) >= 14
    paths = [
        (folders[split] / f"{stem}.jpg", folders[split] / f"{stem}.json") for split, stem in records
    ]
    expected: dict[str, str] = {}
    warned: dict[str, str] = {}

    def bad(index: int, reason: str) -> tuple[Path, Path]:
        expected[records[index][1]] = reason
        return paths[index]

    def odd(index: int, reason: str) -> tuple[Path, Path]:
        warned[records[index][1]] = reason
        return paths[index]

    jpg, _ = bad(0, "image does not decode")
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    jpg, _ = bad(1, "image missing")
    jpg.unlink()
    _, js = odd(2, "has 2 points; drawn as upstream draws it")
    _edit_json(js, lambda a: a["shapes"][0].update(points=a["shapes"][0]["points"][:2]))
    _, js = odd(3, "outside the")
    _edit_json(js, _shift_out)
    _, js = bad(4, "json is neither UTF-8 nor cp1252")
    js.write_bytes(js.read_bytes().replace(b'"text": [', b'"text": ["\x81", ', 1))
    _, js = odd(5, "true-premise target has an empty mask")
    _edit_json(js, _all_ignore)
    _, js = odd(6, "text 0: query text is empty")
    _edit_json(js, lambda a: a.update(text=["   "]))
    _, js = odd(7, "differs from the annotation")
    _edit_json(js, lambda a: a.update(imageWidth=a["imageWidth"] + 1))
    _, js = bad(12, "query text is not a string")
    _edit_json(js, lambda a: a.update(text=[42]))
    _, js = bad(13, "cannot be cast to int32")
    _edit_json(js, lambda a: a["shapes"][0].update(points=[[1, 1], [None, 2], [3, 3]]))
    _, js = bad(8, "json parse error")
    js.write_bytes(js.read_bytes()[:-20])
    _, js = bad(9, "annotation missing")
    js.unlink()
    _, js = bad(10, "json lacks the key 'is_sentence'")
    _edit_json(js, lambda a: a.pop("is_sentence"))
    # A valid cp1252 file is not bad: upstream falls back to cp1252 and so do we.
    cp1252_json = paths[11][1]
    anno = json.loads(cp1252_json.read_text(encoding="utf-8"))
    anno["text"] = ["the piñata-coloured shape"]
    cp1252_json.write_bytes(json.dumps(anno, ensure_ascii=False).encode("cp1252"))

    samples, quarantine = _split(list(iter_reason_seg(root, ALL_REASON_SEG)))
    reasons = {q.record_id: q.reason for q in quarantine}
    assert set(reasons) == set(expected)
    for stem, fragment in expected.items():
        assert fragment in reasons[stem], (stem, reasons[stem])
    assert all(q.source.endswith(".json") for q in quarantine)

    good, _ = _split(list(iter_reason_seg(pristine, ALL_REASON_SEG)))
    assert good, "the pristine tree reads cleanly"
    assert not any(s.warnings for s in good.values())
    assert len(samples) == len(good) - len(expected)
    cp1252_stem = records[11][1]
    for key, sample in samples.items():
        stem = sample.source["image_id"]
        if stem in warned:  # kept as upstream keeps it, with the reason attached
            assert any(warned[stem] in w.reason for w in sample.warnings), sample.warnings
            continue
        assert not sample.warnings, (stem, sample.warnings)
        if stem == cp1252_stem:
            assert sample.targets[0].queries[0].text == "the piñata-coloured shape"
            np.testing.assert_array_equal(sample.targets[0].mask, good[key].targets[0].mask)
        else:
            _same_sample(sample, good[key])


# ---------------------------------------------------------------- REFER


def _refs_file(root: Path) -> Path:
    return root / "refer_seg" / "refcoco" / "refs(unc).p"


def test_refer_bad_records_are_quarantined(pristine: Path, root: Path) -> None:
    folder = root / "refer_seg" / "refcoco"
    with open(_refs_file(root), "rb") as handle:
        refs = pickle.load(handle)  # generated by this test session, trusted
    instances = json.loads((folder / "instances.json").read_text())
    anns = {a["id"]: a for a in instances["annotations"]}
    images = {im["id"]: im for im in instances["images"]}
    by_image: dict[int, list[dict]] = {}
    for ref in refs:
        if ref["split"] == "train":
            by_image.setdefault(ref["image_id"], []).append(ref)
    multi = [i for i, group in sorted(by_image.items()) if len(group) >= 2]
    single_fault_images = sorted(by_image)[:3]
    ref_fault_images = [i for i in multi if i not in single_fault_images][:5]
    assert len(ref_fault_images) == 5
    image_dir = root / "refer_seg/images/mscoco/images/train2014"

    # Image-level faults: the whole image is quarantined.
    corrupt, missing, resized = single_fault_images
    path = image_dir / images[corrupt]["file_name"]
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (image_dir / images[missing]["file_name"]).unlink()
    images[resized]["width"] += 3
    # Ref-level faults: that ref is quarantined, the image's other refs still arrive.
    two_points, outside, empty_mask, empty_text, unknown_ann = (
        by_image[i][0] for i in ref_fault_images
    )
    anns[two_points["ann_id"]]["segmentation"] = [[1.0, 1.0, 20.0, 20.0]]  # pycocotools fails
    anns[outside["ann_id"]]["segmentation"] = [[500.0, 500.0, 600.0, 500.0, 600.0, 600.0]]
    anns[empty_mask["ann_id"]]["segmentation"] = []
    empty_text["sentences"][0]["sent"] = ""
    unknown_ann["ann_id"] = 987_654
    (folder / "instances.json").write_text(json.dumps(instances))
    with open(_refs_file(root), "wb") as handle:
        pickle.dump(refs, handle, protocol=2)

    samples, quarantine = _split(list(iter_refer(root, "refcoco", "train")))
    reasons = {q.record_id.split(" (")[0]: q.reason for q in quarantine}
    expected = {
        f"image {corrupt}": "image does not decode",
        f"image {missing}": "image missing",
        f"image {resized}": "differs from the annotation",
        f"ref {two_points['ref_id']}": "pycocotools cannot decode",
        f"ref {unknown_ann['ref_id']}": "ann_id 987654 not in instances.json",
    }
    assert set(reasons) == set(expected)
    for record, fragment in expected.items():
        assert fragment in reasons[record], (record, reasons[record])
    warned = {  # upstream keeps these refs, and so does the reader, with a warning
        str(outside["ref_id"]): "outside the",
        str(empty_mask["ref_id"]): "true-premise target has an empty mask",
        str(empty_text["ref_id"]): "sentence 0: query text is empty",
    }
    warnings = " | ".join(w.reason for s in samples.values() for w in s.warnings)
    for ref_id, fragment in warned.items():
        assert f"ref {ref_id}" in warnings and fragment in warnings, (ref_id, warnings)

    good, none_quarantined = _split(list(iter_refer(pristine, "refcoco", "train")))
    assert not none_quarantined
    lost_images = {f"refcoco_train_{i:012d}" for i in single_fault_images}
    assert set(samples) == set(good) - lost_images
    bad_refs = {str(r["ref_id"]) for r in (two_points, unknown_ann)}
    for key, sample in samples.items():
        kept = [t for t in good[key].targets if t.target_id not in bad_refs]
        assert [t.target_id for t in sample.targets] == [t.target_id for t in kept]
        for got, want in zip(sample.targets, kept, strict=True):
            if got.target_id in warned:
                continue  # its edited geometry / text, kept as upstream keeps it
            np.testing.assert_array_equal(got.mask, want.mask)
            assert got.queries == want.queries


class _SystemCall:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_refs_pickle_is_refused(root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with open(_refs_file(root), "wb") as handle:
        pickle.dump([{"ref_id": 1, "split": "train", "x": _SystemCall(f"touch {marker}")}], handle)
    with pytest.raises(UnsafePickleError, match=r"refs\(unc\)\.p: refused to load global"):
        list(iter_refer(root, "refcoco", "train"))
    assert not marker.exists()
    # The other datasets of the same tree are unaffected.
    samples, quarantine = _split(list(iter_refer(root, "refcoco+", "train")))
    assert samples and not quarantine


def test_unreadable_instances_file_is_a_clear_error(root: Path) -> None:
    instances = root / "refer_seg" / "refcoco" / "instances.json"
    instances.write_text('{"images": [}')
    with pytest.raises(ReferFormatError, match="not a COCO instances file"):
        list(iter_refer(root, "refcoco", "val"))
    instances.unlink()
    with pytest.raises(ReferFormatError, match="instances file not found"):
        list(iter_refer(root, "refcoco", "val"))


def test_malformed_ref_entries_are_quarantined(root: Path) -> None:
    with open(_refs_file(root), "rb") as handle:
        refs = pickle.load(handle)
    with open(_refs_file(root), "wb") as handle:
        pickle.dump([*refs, "not a ref", {"ref_id": 5}], handle, protocol=2)
    items = list(iter_refer(root, "refcoco", "val"))
    _, quarantine = _split(items)
    assert [(q.record_id, q.reason) for q in quarantine] == [
        (f"ref#{len(refs)}", "ref lacks image_id or split"),
        (f"ref#{len(refs) + 1}", "ref lacks image_id or split"),
    ]
