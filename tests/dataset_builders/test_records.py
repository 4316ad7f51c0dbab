"""Readers keep every record upstream keeps, drawn and oriented as upstream reads it.

References are upstream's own procedures: `cv2.imread` for images (EXIF orientation applied),
and `get_mask_from_json` (`READ:dataloaders/data_processing.py`) transcribed step for step in
`_upstream_mask` below: int32 cast, cv2 polylines + fillPoly, ``np.argsort(areas)[::-1]``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from dataset_builders.images import decode_rgb
from dataset_builders.masks import rasterize_labelme
from dataset_builders.reason_seg import read_record
from dataset_builders.refer import COCO_IMAGE_DIR, iter_refer
from dataset_builders.sample import QuarantineEntry, Sample
from dataset_builders.validation import BuildReport, check_image
from pipelines.examples import decode_image


def _upstream_mask(shapes: list[dict], height: int, width: int) -> np.ndarray:
    """Upstream's rasterisation, step for step (the reference, independent of the reader)."""
    areas, valid = [], []
    for shape in shapes:
        if shape["label"].lower() == "flag":
            continue
        tmp = np.zeros((height, width), dtype=np.uint8)
        cv2.polylines(tmp, np.array([shape["points"]], dtype=np.int32), True, 1, 1)
        cv2.fillPoly(tmp, np.array([shape["points"]], dtype=np.int32), 1)
        areas.append(tmp.sum())
        valid.append(shape)
    order = list(np.argsort(areas)[::-1].astype(np.int32))
    mask = np.zeros((height, width), dtype=np.uint8)
    for index in order:
        shape = valid[index]
        value = 255 if "ignore" in shape["label"].lower() else 1
        cv2.polylines(mask, np.array([shape["points"]], dtype=np.int32), True, value, 1)
        cv2.fillPoly(mask, np.array([shape["points"]], dtype=np.int32), value)
    return mask


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


# ---------------------------------------------------------------- EXIF orientation
def _photo(width: int = 48, height: int = 32) -> np.ndarray:
    """Four flat quadrants, so any rotation or flip is visible."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2, : width // 2] = (230, 30, 30)
    image[: height // 2, width // 2 :] = (30, 230, 30)
    image[height // 2 :, : width // 2] = (30, 30, 230)
    image[height // 2 :, width // 2 :] = (230, 230, 30)
    return image


def _rotated_jpeg(path: Path, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_photo()).save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path.read_bytes()


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_images_decode_as_cv2_imread_orients_them(tmp_path: Path, orientation: int) -> None:
    path = tmp_path / "photo.jpg"
    data = _rotated_jpeg(path, orientation)
    reference = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)  # what upstream reads
    if orientation in (6, 8):
        assert reference.shape[:2] == (48, 32)  # cv2 applied the 90-degree turn
    decoded = decode_rgb(data)
    assert decoded.shape == reference.shape
    assert np.abs(decoded.astype(int) - reference.astype(int)).max() <= 2  # same JPEG decoder
    assert check_image(data) == ((reference.shape[1], reference.shape[0]), None)


def _labelme(folder: Path, stem: str, shapes: list[dict], size: tuple[int, int],
             text: list | str | None = None) -> Path:
    anno = {"text": text if text is not None else ["the red part"], "is_sentence": False,
            "shapes": shapes, "imageWidth": size[0], "imageHeight": size[1]}
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(anno), encoding="utf-8")
    return path


def test_rotated_reason_seg_record_is_drawn_on_the_upright_image(tmp_path: Path) -> None:
    _rotated_jpeg(tmp_path / "up.jpg", 6)
    upright = cv2.imread(str(tmp_path / "up.jpg"))
    height, width = upright.shape[:2]  # 48 x 32 after the turn
    shapes = [{"label": "target", "points": _rect(2.5, 30.2, 20.7, 45.9)}]  # below stored height
    _labelme(tmp_path, "up", shapes, (width, height))
    sample = read_record(tmp_path, "up", "val")
    assert isinstance(sample, Sample) and not sample.warnings
    assert (sample.height, sample.width) == (height, width)
    np.testing.assert_array_equal(sample.targets[0].mask, _upstream_mask(shapes, height, width))
    assert decode_image(sample).shape == (height, width, 3)

    # The JSON declares the stored size: upstream never reads it, so the record stays, warned.
    (tmp_path / "raw.jpg").write_bytes((tmp_path / "up.jpg").read_bytes())
    _labelme(tmp_path, "raw", shapes, (height, width))
    kept = read_record(tmp_path, "raw", "val")
    assert isinstance(kept, Sample)
    assert [w.reason for w in kept.warnings] == [
        "image size 32x48 differs from the annotation's 48x32; the decoded (EXIF-oriented) "
        "size is used, as upstream"]
    np.testing.assert_array_equal(kept.targets[0].mask, sample.targets[0].mask)


# ---------------------------------------------------------------- shapes upstream draws
def _image(folder: Path, stem: str, height: int = 40, width: int = 50) -> None:
    cv2.imwrite(str(folder / f"{stem}.jpg"), np.full((height, width, 3), 90, np.uint8))


def test_two_point_and_outside_polygons_are_kept_and_drawn_as_upstream(tmp_path: Path) -> None:
    shapes = [
        {"label": "target", "points": [[3.7, 4.2], [30.9, 20.5]], "shape_type": "rectangle"},
        {"label": "target", "points": [[-6.0, 30.0], [20.0, 30.0], [20.0, 46.5], [-6.0, 46.5]]},
        {"label": "target", "points": [[48.0, 2.0], [49.9, 2.0], [49.0, 10.0]]},
    ]
    _image(tmp_path, "odd")
    _labelme(tmp_path, "odd", shapes, (50, 40))
    sample = read_record(tmp_path, "odd", "train")
    assert isinstance(sample, Sample)
    np.testing.assert_array_equal(sample.targets[0].mask, _upstream_mask(shapes, 40, 50))
    assert sample.targets[0].mask[4, 3] == 1  # the 2-point "rectangle" is a drawn line
    reasons = [w.reason for w in sample.warnings]
    assert any("has 2 points" in r for r in reasons)
    assert any("outside the 50x40 image" in r for r in reasons)
    assert len(reasons) == 2  # the third polygon is inside (within the 2 px tolerance)


@pytest.mark.parametrize("count", [2, 3, 5, 17, 40])
def test_equal_areas_are_painted_in_numpys_argsort_order(count: int) -> None:
    """Equal areas come in whatever order upstream's ``np.argsort(areas)[::-1]`` leaves them."""
    rng = np.random.default_rng(count)
    labels = rng.choice(["target", "ignore"], size=count)
    shapes = [{"label": str(label), "points": _rect(5, 5, 15, 15)} for label in labels]
    shapes.append({"label": "target", "points": _rect(1, 1, 30, 30)})  # larger: painted first
    mask = rasterize_labelme(shapes, 32, 32)
    np.testing.assert_array_equal(mask, _upstream_mask(shapes, 32, 32))
    last = np.argsort(np.full(count, 121, np.uint64))[::-1][-1]  # painted last
    assert mask[10, 10] == (255 if labels[last] == "ignore" else 1)


@pytest.mark.parametrize(
    ("points", "fragment"),
    [
        ([[1.0, 1.0], [float("nan"), 3.0], [5.0, 9.0]], "cannot be cast to int32"),
        ([], "expected [N, 2]"),
        ([[1, 2, 3], [4, 5, 6]], "expected [N, 2]"),
        ([["a", 1], [2, 3], [4, 5]], "cannot be cast to int32"),
    ],
)
def test_only_what_upstream_fails_on_is_quarantined(tmp_path: Path, points, fragment) -> None:
    _image(tmp_path, "bad")
    _labelme(tmp_path, "bad", [{"label": "target", "points": points}], (50, 40))
    entry = read_record(tmp_path, "bad", "train")
    assert isinstance(entry, QuarantineEntry) and fragment in entry.reason
    # The same geometry under a "flag" label is dropped before drawing, so the record stays.
    _labelme(tmp_path, "bad", [{"label": "Flag", "points": points},
                               {"label": "target", "points": _rect(2, 2, 9, 9)}], (50, 40))
    assert isinstance(read_record(tmp_path, "bad", "train"), Sample)


def test_unusual_records_are_kept_and_counted_apart_from_quarantine(tmp_path: Path) -> None:
    _image(tmp_path, "empty")
    _labelme(tmp_path, "empty", [{"label": "ignore", "points": _rect(2, 2, 9, 9)}], (50, 40),
             text=["  ", "the thing"])
    _image(tmp_path, "broken")
    _labelme(tmp_path, "broken", [{"label": 7, "points": _rect(2, 2, 9, 9)}], (50, 40))
    report = BuildReport()
    samples = report.add_all(read_record(tmp_path, stem, "val") for stem in ("empty", "broken"))
    assert len(samples) == 1 and len(report.quarantine) == 1
    assert report.to_dict()["num_warnings"] == 2
    assert report.warning_counts() == {"text 0": 1, "true-premise target has an empty mask (kept": 1}
    assert samples[0].targets[0].queries[0].text == "  "  # kept as upstream keeps it


# ---------------------------------------------------------------- REFER
def test_refer_keeps_what_pycocotools_decodes(tmp_path: Path) -> None:
    folder = tmp_path / "refer_seg" / "refcoco"
    folder.mkdir(parents=True)
    images = tmp_path / COCO_IMAGE_DIR
    images.mkdir(parents=True)
    cv2.imwrite(str(images / "a.jpg"), np.full((40, 50, 3), 90, np.uint8))
    segmentations = {
        1: [[2, 2, 30, 2, 30, 20, 2, 20]],  # fine
        2: [[2, 2, 30, 2, 30, 20, 2]],  # odd coordinate count: pycocotools reads 3 points
        3: [[-10, -10, 70, -10, 70, 60, -10, 60]],  # far past the edge: clipped
        4: [[2, 2, 30, 20]],  # pycocotools takes a 4-number list for a box and fails
        5: [[45, 35, 49, 35, 49, 39, 45, 39]],  # a target whose only sentence is blank
    }
    refs = [{"ref_id": i, "ann_id": i, "image_id": 9, "category_id": 1, "split": "val",
             "sentences": [{"sent": "  " if i == 5 else f"thing {i}", "sent_id": i}]}
            for i in segmentations]
    with open(folder / "refs(unc).p", "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    instances = {"images": [{"id": 9, "file_name": "a.jpg", "height": 40, "width": 50}],
                 "annotations": [{"id": i, "image_id": 9, "segmentation": s}
                                 for i, s in segmentations.items()], "categories": []}
    (folder / "instances.json").write_text(json.dumps(instances))
    items = list(iter_refer(tmp_path, "refcoco", "val", split_by="unc"))
    samples = [i for i in items if isinstance(i, Sample)]
    quarantined = [i for i in items if isinstance(i, QuarantineEntry)]
    assert [q.record_id for q in quarantined] == ["ref 4"]
    assert "pycocotools cannot decode" in quarantined[0].reason
    (sample,) = samples
    assert [t.target_id for t in sample.targets] == ["1", "2", "3", "5"]
    reasons = " | ".join(w.reason for w in sample.warnings)
    assert "odd number of coordinates (7)" in reasons and "outside the 50x40 image" in reasons
    assert "sentence 0: query text is empty" in reasons
    assert int(sample.targets[2].mask.sum()) == 40 * 50  # clipped, covers the whole image


# ---------------------------------------------------------------- published split sizes
def test_counts_are_compared_with_the_published_splits() -> None:
    from dataset_builders.published_counts import published_comparison

    assert published_comparison("reason_seg", "val", 200, 200) == (
        "reason_seg/val: 200 images (published 200): matches the published split [LISA README]")
    line = published_comparison("reason_seg", "test", 777, 790)
    assert "777 images (published 779, -2)" in line and "DIFFERS" in line
    line = published_comparison("refcoco", "testA", 750, 5650)
    assert "750 images (published 750)" in line and "5650 expressions (published 5657, -7)" in line
    assert "DIFFERS" in line
    assert "no published count" in published_comparison("fprefcoco", "val", 3, 9)
