"""Semantic-segmentation readers on small hand-made files in each upstream layout.

Expected masks come from upstream's rules written out step by step on the raw label values
(`READ:dataloaders/sem_seg_dataset.py` `__getitem__`: ADE20K's ``label[label == 0] = 255;
label -= 1; label[label == 254] = 255`` in uint8, COCO-Stuff's hyphenated classes painted 255,
``label == classes.index(name)`` per sampled name) or by hand, never from the readers themselves.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from dataset_builders import class_lists
from dataset_builders.label_maps import (
    ade20k_class_ids,
    class_masks,
    cocostuff_class_ids,
)
from dataset_builders.part_seg import (
    PartFormatError,
    iter_part_images,
    paco_class,
    pascal_part_class,
)
from dataset_builders.sample import ClassName, QuarantineEntry, Sample
from dataset_builders.sem_seg import iter_label_maps

H, W = 6, 8


def _jpeg(path: Path, height: int = H, width: int = W) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def _png(path: Path, values: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "P" if palette else "L"
    image = Image.frombytes(mode, (values.shape[1], values.shape[0]),
                            np.ascontiguousarray(values, dtype=np.uint8).tobytes())
    if palette:
        image.putpalette([v % 256 for v in range(768)])
    image.save(path, format="PNG")


def _split(items) -> tuple[list[Sample], list[QuarantineEntry]]:
    items = list(items)
    return ([i for i in items if isinstance(i, Sample)],
            [i for i in items if isinstance(i, QuarantineEntry)])


def _upstream_ade20k(raw: np.ndarray) -> np.ndarray:
    """Upstream's three lines, on the uint8 array PIL gives."""
    label = raw.astype(np.uint8).copy()
    label[label == 0] = 255
    label -= 1
    label[label == 254] = 255
    return label


# ---------------------------------------------------------------- upstream's label rules


def test_ade20k_remap_equals_upstreams_uint8_steps_for_every_value() -> None:
    raw = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = _upstream_ade20k(raw).astype(np.int64)
    np.testing.assert_array_equal(ade20k_class_ids(raw), expected)
    assert ade20k_class_ids(np.array([[0, 1, 150, 255]]) ).tolist() == [[255, 0, 149, 255]]


def test_cocostuff_hyphenated_classes_are_ignored() -> None:
    classes = ["person", "wall-brick", "sky-other", "grass"]
    raw = np.array([[0, 1, 2, 3, 255]])
    assert cocostuff_class_ids(raw, classes).tolist() == [[0, 255, 255, 3, 255]]


def test_class_masks_follow_the_first_id_of_a_name_and_keep_ignore() -> None:
    classes = ["road", "car", "road", "sky"]  # a duplicated name: upstream's index() finds id 0
    label = np.array([[0, 1, 2, 255], [3, 3, 2, 1]])
    found = class_masks(label, classes)
    assert found.present == [0, 1, 2, 3] and found.absent == []
    masks = dict(zip(found.present, found.masks, strict=True))
    np.testing.assert_array_equal(masks[1], [[0, 1, 0, 255], [0, 0, 0, 1]])
    # id 2 is named "road" too: upstream's mask for it is label == 0
    np.testing.assert_array_equal(masks[2], masks[0])
    np.testing.assert_array_equal(masks[0], [[1, 0, 0, 255], [0, 0, 0, 0]])
    assert any("shares the name" in w for w in found.warnings)


def test_bundled_class_lists_have_upstreams_sizes_and_hyphen_count() -> None:
    ade = class_lists.ade20k_classes(Path("/nonexistent"))
    stuff = class_lists.cocostuff_classes(Path("/nonexistent"))
    assert len(ade) == class_lists.ADE20K_COUNT and ade[:3] == ["wall", "building", "sky"]
    assert len(stuff) == class_lists.COCOSTUFF_COUNT and stuff[0] == "person"
    assert sum("-" in name for name in stuff) == 28
    assert len(set(ade)) == len(ade)


@pytest.mark.skipif(not os.environ.get("READ_UPSTREAM_CHECKOUT"),
                    reason="set READ_UPSTREAM_CHECKOUT to a READ checkout to compare the lists")
def test_bundled_class_lists_equal_an_upstream_checkout() -> None:
    checkout = Path(os.environ["READ_UPSTREAM_CHECKOUT"]) / "dataloaders"
    upstream_ade = json.loads((checkout / "ade20k_classes.json").read_text())
    upstream_stuff = class_lists.parse_cocostuff_lines(
        (checkout / "cocostuff_classes.txt").read_text(), "upstream")
    assert class_lists.ade20k_classes(Path("/nonexistent")) == upstream_ade
    assert class_lists.cocostuff_classes(Path("/nonexistent")) == upstream_stuff


# ---------------------------------------------------------------- ADE20K layout


@pytest.fixture
def ade_root(tmp_path: Path) -> Path:
    """Four ADE20K records: a good one, one without label map, one corrupt image, one with an
    unknown class value, one whose pixels are all "other"; the bundled 150-class list."""
    images = tmp_path / "ade20k/images/training"
    labels = tmp_path / "ade20k/annotations/training"
    good = np.zeros((H, W), np.uint8)
    good[0:2, 0:3] = 1  # wall
    good[2:4, 4:8] = 3  # sky
    good[5, :] = 255  # upstream: 255 -> 254 -> ignore
    good[4, 0] = 150  # the last class ("flag")
    _jpeg(images / "ADE_train_00000001.jpg")
    _png(labels / "ADE_train_00000001.png", good)
    _jpeg(images / "ADE_train_00000002.jpg")  # no label map
    (images / "ADE_train_00000003.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    _png(labels / "ADE_train_00000003.png", good)
    _jpeg(images / "ADE_train_00000004.jpg")
    unknown = good.copy()
    unknown[0, 7] = 200  # class 199 of 150
    _png(labels / "ADE_train_00000004.png", unknown)
    _jpeg(images / "ADE_train_00000005.jpg")
    _png(labels / "ADE_train_00000005.png", np.zeros((H, W), np.uint8))
    return tmp_path


def test_ade20k_masks_per_class_ignore_and_absent_names(ade_root: Path) -> None:
    samples, quarantine = _split(iter_label_maps(ade_root, "ade20k", "train"))
    assert [s.key for s in samples] == ["ade20k_train_ADE_train_00000001"]
    sample = samples[0]
    raw = np.array(Image.open(ade_root / "ade20k/annotations/training/ADE_train_00000001.png"))
    upstream = _upstream_ade20k(raw)
    classes = class_lists.ade20k_classes(ade_root / "ade20k")
    assert [t.queries[0].text for t in sample.targets] == ["wall", "sky", "flag"]
    for target in sample.targets:
        class_id = int(target.target_id)
        np.testing.assert_array_equal(target.mask == 1, upstream == class_id)
        np.testing.assert_array_equal(target.mask == 255, upstream == 255)  # ignore pixels
        assert classes[class_id] == target.queries[0].text
    assert int((sample.targets[0].mask == 255).sum()) == H * W - 6 - 8 - 1  # by hand
    absent = [c.name for c in sample.absent_classes]
    assert len(absent) == 147 and "wall" not in absent and "building" in absent
    reasons = {q.record_id: q.reason for q in quarantine}
    assert reasons["ADE_train_00000002"].startswith("annotation missing")
    assert reasons["ADE_train_00000003"].startswith("image does not decode")
    assert reasons["ADE_train_00000004"].startswith("unknown class id")
    assert "199" in reasons["ADE_train_00000004"]
    assert reasons["ADE_train_00000005"].startswith("no class present")


def test_label_map_that_is_not_one_index_per_pixel_or_not_the_image_size(tmp_path: Path) -> None:
    images = tmp_path / "ade20k/images/training"
    labels = tmp_path / "ade20k/annotations/training"
    _jpeg(images / "a.jpg")
    labels.mkdir(parents=True)
    Image.fromarray(np.ones((H, W, 3), np.uint8)).save(labels / "a.png")  # an RGB label map
    _jpeg(images / "b.jpg")
    _png(labels / "b.png", np.ones((H + 1, W), np.uint8))
    _, quarantine = _split(iter_label_maps(tmp_path, "ade20k", "train"))
    reasons = {q.record_id: q.reason for q in quarantine}
    assert "one class index per pixel" in reasons["a"]
    assert reasons["b"] == f"label map is {W}x{H + 1} but the image is {W}x{H}"


def test_missing_split_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="label folder not found"):
        list(iter_label_maps(tmp_path, "ade20k", "train"))
    with pytest.raises(ValueError, match="no split 'testing'"):
        list(iter_label_maps(tmp_path, "ade20k", "testing"))


# ---------------------------------------------------------------- COCO-Stuff layout


def test_cocostuff_layout_own_class_list_and_hyphen_rule(tmp_path: Path) -> None:
    (tmp_path / "cocostuff").mkdir()
    (tmp_path / "cocostuff/cocostuff_classes.txt").write_text(
        "0: unlabeled\n1: person\n2: wall-brick\n3: grass\n")
    raw = np.array([[0, 0, 1, 1], [2, 2, 255, 1]], np.uint8)
    _png(tmp_path / "cocostuff/train2017/000000000009.png", raw)
    _jpeg(tmp_path / "coco/train2017/000000000009.jpg", 2, 4)
    _png(tmp_path / "cocostuff/train2017/000000000010.png", raw)  # its image is missing
    samples, quarantine = _split(iter_label_maps(tmp_path, "cocostuff", "train"))
    (sample,) = samples
    assert [t.queries[0].text for t in sample.targets] == ["person", "grass"]
    np.testing.assert_array_equal(sample.targets[0].mask, [[1, 1, 255, 255], [0, 0, 255, 255]])
    np.testing.assert_array_equal(sample.targets[1].mask, [[0, 0, 255, 255], [1, 1, 255, 255]])
    # the hyphenated class is never present, so it is offered as absent (upstream's range)
    assert sample.absent_classes == [ClassName("wall-brick")]
    assert [q.reason.split(":")[0] for q in quarantine] == ["image missing"]


# ---------------------------------------------------------------- Mapillary layout


def test_mapillary_palette_labels_and_readable_names(tmp_path: Path) -> None:
    config = {"labels": [{"name": "construction--flat--road", "readable": "Road"},
                         {"name": "object--vehicle--car", "readable": "Car"},
                         {"name": "void--unlabeled", "readable": "Unlabeled"}]}
    (tmp_path / "mapillary").mkdir()
    (tmp_path / "mapillary/config_v2.0.json").write_text(json.dumps(config))
    raw = np.array([[0, 0, 2], [1, 255, 2]], np.uint8)
    _png(tmp_path / "mapillary/training/v2.0/labels/m1.png", raw, palette=True)
    _jpeg(tmp_path / "mapillary/training/images/m1.jpg", 2, 3)
    (sample,) = _split(iter_label_maps(tmp_path, "mapillary", "train"))[0]
    assert [t.queries[0].text for t in sample.targets] == ["road", "car", "unlabeled"]
    np.testing.assert_array_equal(sample.targets[1].mask, [[0, 0, 0], [1, 255, 0]])
    assert sample.absent_classes == []


def test_mapillary_without_config_is_a_dataset_error(tmp_path: Path) -> None:
    _png(tmp_path / "mapillary/training/v2.0/labels/m1.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(class_lists.ClassListError, match="Mapillary config not found"):
        list(iter_label_maps(tmp_path, "mapillary", "train"))


# ---------------------------------------------------------------- PACO-LVIS / PASCAL-Part


def test_part_names_follow_upstreams_rules() -> None:
    assert paco_class("bowl_(dish):rim_(edge)") == ClassName("bowl", "rim")
    assert paco_class(" trash_can ") == ClassName("trash_can")
    assert pascal_part_class("dog:head") == ClassName("dog", "head")
    with pytest.raises(PartFormatError, match="object:part"):
        pascal_part_class("dog")
    with pytest.raises(PartFormatError, match="more than one"):
        paco_class("a:b:c")


def _rle(mask: np.ndarray) -> dict:
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(encoded["size"]), "counts": encoded["counts"].decode()}


@pytest.fixture
def paco_root(tmp_path: Path) -> Path:
    mug = np.zeros((H, W), np.uint8)
    mug[1:5, 1:5] = 1
    handle = np.zeros((H, W), np.uint8)
    handle[2:4, 5:7] = 1
    data = {
        "images": [{"id": 1, "file_name": "train2017/000000000001.jpg", "height": H, "width": W},
                   {"id": 2, "file_name": "train2017/000000000002.jpg", "height": H, "width": W},
                   {"id": 3, "file_name": "train2017/000000000003.jpg", "height": H, "width": W},
                   {"id": 4, "file_name": "train2017/000000000004.jpg", "height": H, "width": W}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": _rle(mug)},
            {"id": 11, "image_id": 1, "category_id": 2,
             "segmentation": [[5, 2, 7, 2, 7, 4, 5, 4]]},
            {"id": 12, "image_id": 1, "category_id": 2,
             "segmentation": {"size": [H + 1, W], "counts": "bad"}},
            {"id": 20, "image_id": 3, "category_id": 99, "segmentation": _rle(mug)},
        ],
        "categories": [{"id": 1, "name": "mug_(drinkware)"},
                       {"id": 2, "name": "mug_(drinkware):handle"},
                       {"id": 3, "name": "bowl_(dish):rim"}],
    }
    path = tmp_path / "vlpart/paco/annotations/paco_lvis_v1_train.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    for image_id in (1, 2, 3):
        _jpeg(tmp_path / f"coco/train2017/{image_id:012d}.jpg")
    return tmp_path  # image 4's file is missing


def test_paco_instances_parts_absent_classes_and_bad_annotations(paco_root: Path) -> None:
    samples, quarantine = _split(iter_part_images(paco_root, "paco_lvis", "train"))
    (sample,) = samples
    assert sample.key == "paco_lvis_train_000000000001"
    assert [(t.target_id, t.queries[0].text, t.queries[0].part) for t in sample.targets] == [
        ("10", "mug", ""), ("11", "mug", "handle")]
    assert int(sample.targets[0].mask.sum()) == 16
    # pycocotools' polygon raster of the handle (annToMask)
    expected = coco_mask.decode(coco_mask.merge(
        coco_mask.frPyObjects([[5, 2, 7, 2, 7, 4, 5, 4]], H, W)))
    np.testing.assert_array_equal(sample.targets[1].mask, expected)
    # the category of the dropped annotation 12 is present, so only the bowl rim is absent
    assert sample.absent_classes == [ClassName("bowl", "rim")]
    reasons = {q.record_id: q.reason for q in quarantine}
    assert reasons["ann 12"].startswith("RLE size") and "keeps its other" in reasons["ann 12"]
    assert reasons["image 2"].startswith("no annotations")
    assert reasons["image 3"].startswith("unknown class id")
    assert reasons["image 4"].startswith("image missing")


def test_pascal_part_layout(tmp_path: Path) -> None:
    ear = np.zeros((H, W), np.uint8)
    ear[0:2, 0:2] = 1
    data = {"images": [{"id": 7, "file_name": "2008_000007.jpg", "height": H, "width": W}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 2,
                             "segmentation": _rle(ear)}],
            "categories": [{"id": 1, "name": "dog:head"}, {"id": 2, "name": "cat:ear"}]}
    path = tmp_path / "vlpart/pascal_part/train.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    _jpeg(tmp_path / "vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/2008_000007.jpg")
    (sample,) = _split(iter_part_images(tmp_path, "pascal_part", "train"))[0]
    assert [(q.text, q.part) for t in sample.targets for q in t.queries] == [("cat", "ear")]
    assert sample.absent_classes == [ClassName("dog", "head")]
    data["categories"][0]["name"] = "dog"
    path.write_text(json.dumps(data))
    with pytest.raises(PartFormatError, match="not object:part"):
        list(iter_part_images(tmp_path, "pascal_part", "train"))


def test_part_file_missing_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(PartFormatError, match="annotation file not found"):
        list(iter_part_images(tmp_path, "paco_lvis", "train"))


def test_corrupt_label_png_is_quarantined(tmp_path: Path) -> None:
    _jpeg(tmp_path / "ade20k/images/training/x.jpg")
    label = tmp_path / "ade20k/annotations/training/x.png"
    label.parent.mkdir(parents=True)
    buffer = io.BytesIO()
    Image.fromarray(np.ones((H, W), np.uint8)).save(buffer, format="PNG")
    label.write_bytes(buffer.getvalue()[:40])  # truncated
    (entry,) = _split(iter_label_maps(tmp_path, "ade20k", "train"))[1]
    assert entry.reason.startswith("label map does not decode")
