"""Record checks: each returns a reason for bad input and None for good input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from dataset_builders.sample import QuarantineEntry, Query, Sample, Target, key_part, make_key
from dataset_builders.validation import (
    BuildReport,
    ValidationConfig,
    check_coco_segmentation,
    check_image,
    check_size,
    check_text,
    check_true_premise_mask,
    coco_segmentation_warnings,
    decode_json_text,
    parse_json,
    polygon_cast_error,
    polygon_warnings,
)


def _jpeg(width: int = 40, height: int = 30) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 120, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_image_decodes_and_reports_size() -> None:
    assert check_image(_jpeg(40, 30)) == ((40, 30), None)


@pytest.mark.parametrize(
    "data", [b"", b"not an image at all", _jpeg()[:200]], ids=["empty", "garbage", "truncated"]
)
def test_undecodable_image_gives_reason(data: bytes) -> None:
    size, reason = check_image(data)
    assert size is None
    assert reason.startswith("image does not decode")


def test_size_mismatch() -> None:
    assert check_size((40, 30), (40, 30)) is None
    assert "differs" in check_size((40, 30), (30, 40))


def test_polygon_checks() -> None:
    """Errors are what upstream's int32 cast + cv2 refuse; the rest are warnings."""
    square = [[1, 1], [10, 1], [10, 10], [1, 10]]
    assert polygon_cast_error(square) is None and polygon_warnings(square, 20, 20) == []
    assert "2 points" in polygon_warnings([[1, 1], [5, 5]], 20, 20)[0]
    assert "outside" in polygon_warnings([[1, 1], [50, 1], [50, 10]], 20, 20)[0]
    assert "cannot be cast" in polygon_cast_error([[1, 1], [np.nan, 1], [5, 5]])
    assert "expected [N, 2]" in polygon_cast_error([1, 2, 3])
    assert "expected [N, 2]" in polygon_cast_error([])
    assert "cannot be cast" in polygon_cast_error([["a", "b"], [1, 2], [3, 4]])


def test_polygon_tolerance_is_a_setting() -> None:
    slightly_out = [[-1.5, 0], [21.5, 0], [10, 10]]
    assert polygon_warnings(slightly_out, 20, 20) == []  # default tolerance 2 px
    assert "outside" in polygon_warnings(
        slightly_out, 20, 20, ValidationConfig(polygon_tolerance_px=1)
    )[0]


def test_coco_segmentation_checks() -> None:
    assert check_coco_segmentation([], 20, 20) is None
    assert check_coco_segmentation([[1, 1, 10, 1, 10, 10]], 20, 20) is None
    assert "pycocotools cannot decode" in check_coco_segmentation([[1, 1, 10, 10]], 20, 20)
    assert check_coco_segmentation([[1, 1, 10, 1, 10]], 20, 20) is None  # pycocotools reads it
    assert "odd" in coco_segmentation_warnings([[1, 1, 10, 1, 10]], 20, 20)[0]
    rle = coco_mask.encode(np.asfortranarray(np.ones((20, 30), np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    assert check_coco_segmentation(rle, 30, 20) is None
    assert coco_segmentation_warnings(rle, 30, 20) == []
    assert "RLE size" in check_coco_segmentation(rle, 20, 30)
    assert "neither" in check_coco_segmentation({"foo": 1}, 20, 20)


def test_text_and_mask_checks() -> None:
    assert check_text("the red circle") is None
    for bad in ["", "   ", None, 3]:
        assert "empty or not a string" in check_text(bad)
    mask = np.zeros((5, 5), np.uint8)
    assert check_true_premise_mask(mask) == "true-premise target has an empty mask"
    mask[0, 0] = 255
    assert check_true_premise_mask(mask) is not None  # ignore pixels are not an object
    mask[1, 1] = 1
    assert check_true_premise_mask(mask) is None


def test_json_decoding_falls_back_to_cp1252() -> None:
    assert decode_json_text('{"t": "café"}'.encode()) == ('{"t": "café"}', None)
    assert decode_json_text('{"t": "café"}'.encode("cp1252")) == ('{"t": "café"}', None)
    text, reason = decode_json_text(b'{"t": "\x81"}')  # invalid in UTF-8 and undefined in cp1252
    assert text is None
    assert "neither UTF-8 nor cp1252" in reason
    assert parse_json(b"{not json")[1].startswith("json parse error")
    assert parse_json('{"a": [1]}'.encode("utf-8-sig")) == ({"a": [1]}, None)


def test_build_report_counts() -> None:
    report = BuildReport()
    sample = Sample(
        "k",
        "d",
        "train",
        b"",
        2,
        2,
        [Target(np.zeros((2, 2), np.uint8), [Query("a", False), Query("b", False)])],
    )
    bad = QuarantineEntry("file.json", "r1", "image missing: x.jpg not found")
    assert report.add_all([sample, bad, sample]) == [sample, sample]
    summary = report.to_dict()
    assert (summary["num_samples"], summary["num_targets"], summary["num_queries"]) == (2, 2, 4)
    assert summary["num_quarantined"] == 1
    assert summary["quarantine"][0]["reason"].startswith("image missing")
    assert report.reason_counts() == {"image missing": 1}


def test_keys_are_dot_free_and_distinct() -> None:
    assert make_key("refcoco", "testA", "123") == "refcoco_testA_123"
    assert make_key("refcoco+", "val", "7") != make_key("refcoco", "val", "7")
    raw_ids = ["a.b", "a-b", "a/b", "a b", "ä", ""]
    parts = [key_part(r) for r in raw_ids]
    assert len(set(parts)) == len(parts)
    assert all(p and "." not in p and "/" not in p and " " not in p for p in parts)
