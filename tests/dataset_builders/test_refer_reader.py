"""REFER-format reader: masks, sentences, split matching and splitBy resolution."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from dataset_builders.masks import decode_coco_segmentation, union_of_annotations
from dataset_builders.refer import (
    ReferFormatError,
    iter_refer,
    refs_path,
    sentence_exists,
    split_matches,
)
from dataset_builders.sample import QuarantineEntry, Sample
from dataset_builders.synthetic.generate import REFER_FLAVOURS

SPLITS = {"unc": ("train", "val", "testA", "testB"), "other": ("train", "val", "test")}


@pytest.fixture
def dataset_root(synthetic_root: Path) -> Path:
    """The session's generated tree (read-only; tests that edit files copy them first)."""
    return synthetic_root


def _samples(root: Path, dataset: str, split: str, **kwargs) -> list[Sample]:
    items = list(iter_refer(root, dataset, split, **kwargs))
    assert not [i for i in items if isinstance(i, QuarantineEntry)]
    return items


@pytest.mark.parametrize("flavour", REFER_FLAVOURS, ids=lambda f: f.name)
def test_reader_matches_an_independent_pycocotools_decode(dataset_root: Path, flavour) -> None:
    folder = dataset_root / "refer_seg" / flavour.name
    coco = COCO(str(folder / "instances.json"))
    with open(folder / f"refs({flavour.split_by}).p", "rb") as handle:
        refs = {r["ref_id"]: r for r in pickle.load(handle)}  # our own trusted test output
    splits = (
        SPLITS["unc"]
        if flavour.name.startswith("refcoco") and flavour.split_by.startswith("unc")
        else SPLITS["other"]
    )
    seen_refs = set()
    for split in splits:
        samples = _samples(dataset_root, flavour.name, split)
        expected_images = {r["image_id"] for r in refs.values() if r["split"] == split}
        assert {int(s.source["image_id"]) for s in samples} == expected_images
        for sample in samples:
            info = coco.imgs[int(sample.source["image_id"])]
            assert (sample.width, sample.height) == (info["width"], info["height"])
            assert sample.key == f"{flavour.name.replace('+', 'plus')}_{split}_{info['id']:012d}"
            for target in sample.targets:
                ref = refs[int(target.target_id)]
                seen_refs.add(ref["ref_id"])
                independent = coco.annToMask(coco.anns[ref["ann_id"]])
                np.testing.assert_array_equal(target.mask, independent)
                assert target.mask.dtype == np.uint8 and target.mask.max() == 1
                sentences = ref["sentences"]
                assert [q.text for q in target.queries] == [s["sent"] for s in sentences]
                assert [q.query_id for q in target.queries] == [
                    str(s["sent_id"]) for s in sentences
                ]
                assert [q.exists for q in target.queries] == [
                    not s.get("is_false_premise", False) for s in sentences
                ]
                assert [q.gt_sent for q in target.queries] == [
                    s.get("gt_sent", "") for s in sentences
                ]
    assert seen_refs == set(refs)  # every ref of the dataset arrived through some split


def test_generated_data_covers_rle_and_false_premises(dataset_root: Path) -> None:
    instances = json.loads((dataset_root / "refer_seg/refcoco/instances.json").read_text())
    kinds = {isinstance(a["segmentation"], dict) for a in instances["annotations"]}
    assert kinds == {True, False}  # both RLE and polygons are exercised
    fp = _samples(dataset_root, "fprefcoco", "train")
    queries = [q for s in fp for t in s.targets for q in t.queries]
    false = [q for q in queries if not q.exists]
    assert false and all(q.gt_sent and q.gt_sent != q.text for q in false)


def test_test_split_is_the_union_of_lettered_splits(dataset_root: Path) -> None:
    test = _samples(dataset_root, "refcoco", "test")
    lettered = _samples(dataset_root, "refcoco", "testA") + _samples(
        dataset_root, "refcoco", "testB"
    )
    assert sorted(t.target_id for s in test for t in s.targets) == sorted(
        t.target_id for s in lettered for t in s.targets
    )


def test_split_matching_follows_refer() -> None:
    assert split_matches("testA", "testA") and split_matches("testA", "testAB")
    assert not split_matches("testA", "testB") and not split_matches("testA", "train")
    assert split_matches("test", "testB") and split_matches("test", "test")
    assert split_matches("val", "val") and not split_matches("val", "train")


def test_split_by_resolution(dataset_root: Path, tmp_path: Path) -> None:
    # refcoco ships the classic refs(unc).p: the SESAME default is absent, so it falls back.
    assert refs_path(dataset_root, "refcoco").name == "refs(unc).p"
    assert refs_path(dataset_root, "refcoco+").name == "refs(unc_exclude_unified).p"
    assert refs_path(dataset_root, "fprefcoco").name == "refs(berkeley_exclude_unified).p"
    with pytest.raises(ReferFormatError, match="refs file not found"):
        refs_path(dataset_root, "refcoco", split_by="google")
    # Both files present: the READ/SESAME name wins over the classic one.
    copy = tmp_path / "copy"
    shutil.copytree(dataset_root / "refer_seg" / "refcoco", copy / "refer_seg" / "refcoco")
    shutil.copytree(dataset_root / "refer_seg" / "images", copy / "refer_seg" / "images")
    folder = copy / "refer_seg" / "refcoco"
    shutil.copy(folder / "refs(unc).p", folder / "refs(unc_exclude_unified).p")
    assert refs_path(copy, "refcoco").name == "refs(unc_exclude_unified).p"
    explicit = _samples(copy, "refcoco", "val", split_by="unc")
    assert explicit and all(s.source["annotation"].endswith("refs(unc).p") for s in explicit)
    (folder / "refs(unc_exclude_unified).p").unlink()
    assert refs_path(copy, "refcoco").name == "refs(unc).p"
    with pytest.raises(ReferFormatError, match="no refs"):
        refs_path(tmp_path / "empty", "refcoco")


def test_sentence_existence_fields() -> None:
    assert sentence_exists({"sent": "a"})
    assert not sentence_exists({"is_false_premise": True})
    assert not sentence_exists({"exist": False})
    assert sentence_exists({"exist": True})
    assert sentence_exists({"is_false_premise": False, "exist": False})  # FP field wins


def test_overlapping_polygon_parts_are_ored_not_summed() -> None:
    parts = [[2, 2, 12, 2, 12, 12, 2, 12], [6, 6, 16, 6, 16, 16, 6, 16]]
    mask = decode_coco_segmentation(parts, 20, 20)
    assert mask.max() == 1
    coco_decode = [decode_coco_segmentation([p], 20, 20) for p in parts]
    np.testing.assert_array_equal(mask, np.maximum(*coco_decode))
    assert np.any(coco_decode[0] & coco_decode[1])  # the parts really overlap


def test_ann_id_lists_or_and_skip_no_target() -> None:
    segs = {1: [[0, 0, 5, 0, 5, 5, 0, 5]], 2: [[3, 3, 9, 3, 9, 9, 3, 9]]}
    both = union_of_annotations([1, 2, -1], segs, 10, 10)
    np.testing.assert_array_equal(
        both,
        np.maximum(
            decode_coco_segmentation(segs[1], 10, 10), decode_coco_segmentation(segs[2], 10, 10)
        ),
    )
    assert not union_of_annotations([-1], segs, 10, 10).any()
    assert decode_coco_segmentation([], 10, 10).shape == (10, 10)


def test_r_refcoco_style_refs(dataset_root: Path, tmp_path: Path) -> None:
    """`exist` sentences and ann_id lists (gRefCOCO style) read through the same reader."""
    source = dataset_root / "refer_seg" / "refcoco"
    target = tmp_path / "refer_seg" / "R-refcoco"
    target.mkdir(parents=True)
    shutil.copy(source / "instances.json", target / "instances.json")
    shutil.copytree(dataset_root / "refer_seg" / "images", tmp_path / "refer_seg" / "images")
    with open(source / "refs(unc).p", "rb") as handle:
        refs = pickle.load(handle)
    val = [r for r in refs if r["split"] == "val"]
    per_image: dict[int, list[dict]] = {}
    for ref in val:
        per_image.setdefault(ref["image_id"], []).append(ref)
    first, second = next(group for group in per_image.values() if len(group) >= 2)[:2]
    for sentence in first["sentences"]:
        sentence["exist"] = True
    negative = {
        "ref_id": 10_000,
        "ann_id": [-1],
        "image_id": first["image_id"],
        "category_id": 1,
        "split": "val",
        "sentences": [{"sent": "the pink cloud", "sent_id": 99_999, "exist": False}],
    }
    pair = dict(first, ref_id=10_001, ann_id=[first["ann_id"], second["ann_id"]])
    with open(target / "refs(unc_exclude_unified).p", "wb") as handle:
        pickle.dump([*val, negative, pair], handle, protocol=2)
    samples = _samples(tmp_path, "R-refcoco", "val")
    by_ref = {t.target_id: t for s in samples for t in s.targets}
    assert not by_ref["10000"].mask.any() and not by_ref["10000"].queries[0].exists
    coco = COCO(str(target / "instances.json"))
    expected = np.zeros_like(by_ref["10001"].mask)
    for ann_id in pair["ann_id"]:
        expected |= coco.annToMask(coco.anns[ann_id])
    np.testing.assert_array_equal(by_ref["10001"].mask, expected)
    assert expected.sum() > coco.annToMask(coco.anns[first["ann_id"]]).sum()
    assert all(q.exists for q in by_ref[str(first["ref_id"])].queries)
