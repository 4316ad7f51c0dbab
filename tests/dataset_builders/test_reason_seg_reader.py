"""ReasonSeg: upstream-exact rasterisation and the folder reader on generated data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dataset_builders.masks import rasterize_labelme
from dataset_builders.reason_seg import iter_reason_seg
from dataset_builders.sample import QuarantineEntry, Sample
from dataset_builders.synthetic import generate_dataset
from dataset_builders.validation import BuildReport


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def test_labelme_rasterisation_matches_upstream_rules() -> None:
    height, width = 40, 50
    shapes = [
        # Listed small first: area sorting must still paint it after (on top of) the big ones.
        {"label": "target", "points": _rect(20.9, 20.9, 24.2, 24.7)},
        {"label": "target", "points": _rect(2.7, 3.2, 30.9, 25.8)},
        {"label": "Ignore_region", "points": _rect(15.0, 15.0, 28.0, 28.0)},
        {"label": "Flag", "points": _rect(32.0, 2.0, 48.0, 38.0)},  # dropped (case-insensitive)
        {"label": "flagpole", "points": _rect(40.0, 30.0, 45.0, 35.0)},  # not exactly "flag"
    ]
    mask = rasterize_labelme(shapes, height, width)

    expected = np.zeros((height, width), np.uint8)
    expected[3:26, 2:31] = 1  # truncation: (2.7, 3.2)-(30.9, 25.8) -> columns 2..30, rows 3..25
    expected[15:29, 15:29] = 255  # smaller than the big target, painted over it
    expected[20:25, 20:25] = 1  # smallest, painted last
    expected[30:36, 40:46] = 1
    np.testing.assert_array_equal(mask, expected)
    assert mask.dtype == np.uint8


def test_equal_areas_are_painted_in_reverse_file_order() -> None:
    """Upstream's argsort(areas)[::-1] on two equal areas paints the second shape first
    (numpy's sort keeps small ties in order; reversed, the first listed is painted last)."""
    same = _rect(5, 5, 15, 15)
    first_ignore = rasterize_labelme(
        [{"label": "ignore", "points": same}, {"label": "x", "points": same}], 20, 20
    )
    first_object = rasterize_labelme(
        [{"label": "x", "points": same}, {"label": "ignore", "points": same}], 20, 20
    )
    assert first_ignore[10, 10] == 255 and first_object[10, 10] == 1


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, seed=3, images=45)
    return root


def _samples(root: Path, split: str) -> list[Sample]:
    items = list(iter_reason_seg(root, split))
    assert not [i for i in items if isinstance(i, QuarantineEntry)]
    return items


def test_reader_on_generated_split(dataset_root: Path) -> None:
    folder = dataset_root / "reason_seg" / "ReasonSeg" / "train"
    samples = _samples(dataset_root, "train")
    assert len(samples) == len(list(folder.glob("*.json"))) > 0
    saw_fp = saw_ignore = False
    for sample in samples:
        stem = sample.source["image_id"]
        anno = json.loads((folder / f"{stem}.json").read_text(encoding="utf-8"))
        assert sample.image_bytes == (folder / f"{stem}.jpg").read_bytes()
        assert (sample.width, sample.height) == (anno["imageWidth"], anno["imageHeight"])
        (target,) = sample.targets
        np.testing.assert_array_equal(
            target.mask, rasterize_labelme(anno["shapes"], sample.height, sample.width)
        )
        assert set(np.unique(target.mask)) <= {0, 1, 255}
        saw_ignore |= bool(np.any(target.mask == 255))
        true_queries = [q for q in target.queries if q.exists]
        assert [q.text for q in true_queries] == anno["text"]
        assert [q.query_id for q in true_queries] == [
            f"{stem}:{i}" for i in range(len(anno["text"]))
        ]
        assert all(q.is_sentence == anno["is_sentence"] for q in true_queries)
        fp_queries = [q for q in target.queries if not q.exists]
        triples = anno.get("false_premise_QA", [])
        assert [[q.text, q.is_sentence, q.answer] for q in fp_queries] == triples
        saw_fp |= bool(triples)
        assert sample.key == f"reason_seg_train_{stem}" and "." not in sample.key
    assert saw_fp and saw_ignore  # the generated data exercises both optional features


def test_joined_split_reads_both_folders(dataset_root: Path) -> None:
    train = _samples(dataset_root, "train")
    val = _samples(dataset_root, "val")
    joined = _samples(dataset_root, "train_val")
    assert [s.key for s in joined] == [s.key for s in train] + [s.key for s in val]
    assert {s.split for s in joined} == {"train", "val"}
    report = BuildReport()
    report.add_all(joined)
    assert report.num_queries == sum(s.num_queries for s in train + val)


def test_missing_split_folder_is_an_error(dataset_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ReasonSeg split folder not found"):
        list(iter_reason_seg(dataset_root, "trian"))


def test_cp1252_json_is_read(tmp_path: Path, dataset_root: Path) -> None:
    folder = tmp_path / "reason_seg" / "ReasonSeg" / "val"
    folder.mkdir(parents=True)
    source = dataset_root / "reason_seg" / "ReasonSeg" / "val"
    stem = sorted(source.glob("*.json"))[0].stem
    anno = json.loads((source / f"{stem}.json").read_text(encoding="utf-8"))
    anno["text"] = ["the café-coloured shape"]
    (folder / f"{stem}.json").write_bytes(json.dumps(anno, ensure_ascii=False).encode("cp1252"))
    (folder / f"{stem}.jpg").write_bytes((source / f"{stem}.jpg").read_bytes())
    (sample,) = _samples(tmp_path, "val")
    assert sample.targets[0].queries[0].text == "the café-coloured shape"


def test_broken_flag_shape_does_not_reject_the_record(tmp_path: Path, dataset_root: Path) -> None:
    """A "flag" shape is dropped before rasterisation, so its geometry is never validated."""
    folder = tmp_path / "reason_seg" / "ReasonSeg" / "test"
    folder.mkdir(parents=True)
    source = dataset_root / "reason_seg" / "ReasonSeg" / "test"
    stem = sorted(source.glob("*.json"))[0].stem
    anno = json.loads((source / f"{stem}.json").read_text(encoding="utf-8"))
    anno["shapes"].append({"label": "FLAG", "points": [[1, 1], [9999, 2]]})
    (folder / f"{stem}.json").write_text(json.dumps(anno), encoding="utf-8")
    (folder / f"{stem}.jpg").write_bytes((source / f"{stem}.jpg").read_bytes())
    (original,) = [s for s in _samples(dataset_root, "test") if s.source["image_id"] == stem]
    (sample,) = _samples(tmp_path, "test")
    np.testing.assert_array_equal(sample.targets[0].mask, original.targets[0].mask)
