"""Reader of ReasonSeg folders (`reason_seg/ReasonSeg/<split>/NAME.jpg` + `NAME.json`).

One image holds one target: the upstream rasterisation of its labelme polygons at the size
`cv2.imread` gives the image (EXIF orientation applied). Every entry of "text" is a query about
it; the optional SESAME `false_premise_QA` triples become false-premise queries on the same
target, carrying their literal answer. A record upstream's loader would fail on comes out as a
`QuarantineEntry`, so the rest of the split still arrives; everything upstream accepts is kept,
with a `WarningEntry` on the sample when something about it is unusual (dataset_builders.validation).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2

from dataset_builders.masks import DEPRECATED_LABEL, rasterize_labelme
from dataset_builders.sample import (
    QuarantineEntry,
    Query,
    Sample,
    Target,
    WarningEntry,
    make_key,
)
from dataset_builders.validation import (
    DEFAULT_VALIDATION,
    ValidationConfig,
    check_image,
    check_size,
    check_text,
    check_true_premise_mask,
    parse_json,
    polygon_cast_error,
    polygon_warnings,
)

DATASET = "reason_seg"
FOLDER = Path("reason_seg") / "ReasonSeg"
SPLIT_JOINER = "_"  # "train_val" reads both folders, as upstream's split string does


class _Rejected(Exception):
    """Internal: a record-level problem, turned into a QuarantineEntry by the caller."""


def split_folders(root: str | Path, split: str) -> list[tuple[str, Path]]:
    """(split name, folder) for each part of a possibly joined split string."""
    return [(part, Path(root) / FOLDER / part) for part in split.split(SPLIT_JOINER) if part]


def list_records(root: str | Path, split: str) -> list[tuple[Path, str, str]]:
    """(folder, stem, split) of every record in file-name order; independent units of work.

    A missing split folder is an error (a typo in a split name must not yield an empty dataset).
    A stem is listed when either its image or its JSON exists, so an orphan is quarantined by
    `read_record` instead of being skipped silently.
    """
    records = []
    for part, folder in split_folders(root, split):
        if not folder.is_dir():
            raise FileNotFoundError(f"ReasonSeg split folder not found: {folder}")
        stems = {p.stem for p in folder.glob("*.jpg")} | {p.stem for p in folder.glob("*.json")}
        records += [(folder, stem, part) for stem in sorted(stems)]
    return records


def iter_reason_seg(
    root: str | Path, split: str, settings: ValidationConfig = DEFAULT_VALIDATION
) -> Iterator[Sample | QuarantineEntry]:
    """Samples of `root/reason_seg/ReasonSeg/<split>` (joined splits in order), by file name."""
    for folder, stem, part in list_records(root, split):
        yield read_record(folder, stem, part, settings)


def read_record(
    folder: Path, stem: str, split: str, settings: ValidationConfig = DEFAULT_VALIDATION
) -> Sample | QuarantineEntry:
    """One NAME.jpg + NAME.json pair as a Sample, or the reason it cannot be one."""
    image_path = folder / f"{stem}.jpg"
    json_path = folder / f"{stem}.json"
    try:
        return _read(image_path, json_path, stem, split, settings)
    except _Rejected as rejected:
        return QuarantineEntry(str(json_path), stem, str(rejected))


def _read(
    image_path: Path, json_path: Path, stem: str, split: str, settings: ValidationConfig
) -> Sample:
    if not image_path.is_file():
        raise _Rejected(f"image missing: {image_path.name} not found")
    if not json_path.is_file():
        raise _Rejected(f"annotation missing: {json_path.name} not found")
    anno, reason = parse_json(json_path.read_bytes())
    if reason:
        raise _Rejected(reason)
    image_bytes = image_path.read_bytes()
    size, reason = check_image(image_bytes)
    if reason:
        raise _Rejected(reason)
    width, height = size
    _check_structure(anno)
    warnings: list[str] = []
    if "imageWidth" in anno and "imageHeight" in anno:
        reason = check_size((width, height), (anno["imageWidth"], anno["imageHeight"]))
        if reason:  # upstream never reads these fields: the decoded image decides
            warnings.append(f"{reason}; the decoded (EXIF-oriented) size is used, as upstream")
    for shape in anno["shapes"]:
        if shape["label"].lower() == DEPRECATED_LABEL:
            continue  # dropped before rasterisation, so its geometry cannot hurt
        reason = polygon_cast_error(shape["points"])
        if reason:
            raise _Rejected(f"shape {shape['label']!r}: {reason}")
        warnings += [f"shape {shape['label']!r}: {w}"
                     for w in polygon_warnings(shape["points"], width, height, settings)]
    queries = _queries(anno, stem, warnings)
    try:
        mask = rasterize_labelme(anno["shapes"], height, width)
    except cv2.error as error:  # upstream's cv2 calls would fail the same way
        raise _Rejected(f"polygons cannot be drawn: {error}") from error
    if any(q.exists for q in queries):
        reason = check_true_premise_mask(mask)
        if reason:
            warnings.append(f"{reason} (kept: upstream trains and scores it as it is)")
    return Sample(
        key=make_key(DATASET, split, stem),
        dataset=DATASET,
        split=split,
        image_bytes=image_bytes,
        width=width,
        height=height,
        targets=[Target(mask=mask, queries=queries, target_id=stem)],
        source={"image": str(image_path), "annotation": str(json_path), "image_id": stem},
        warnings=[WarningEntry(str(json_path), stem, w) for w in warnings],
    )


def _check_structure(anno: Any) -> None:
    if not isinstance(anno, dict):
        raise _Rejected("json is not an object")
    for key in ("text", "is_sentence", "shapes"):
        if key not in anno:
            raise _Rejected(f"json lacks the key {key!r}")
    if not isinstance(anno["shapes"], list) or not all(
        isinstance(s, dict) and isinstance(s.get("label"), str) and "points" in s
        for s in anno["shapes"]
    ):
        raise _Rejected("'shapes' must be a list of objects with a string 'label' and 'points'")
    fp_qa = anno.get("false_premise_QA")
    if fp_qa is not None and not (
        isinstance(fp_qa, list) and all(isinstance(t, list) and len(t) == 3 for t in fp_qa)
    ):
        raise _Rejected("'false_premise_QA' must be a list of [query, is_sentence, answer]")


def _queries(anno: dict[str, Any], stem: str, warnings: list[str]) -> list[Query]:
    texts = anno["text"]
    if not isinstance(texts, list):
        warnings.append("'text' is a single string, read as one query (upstream would take its "
                        "first character)")
        texts = [texts]
    is_sentence = bool(anno["is_sentence"])
    queries = []
    for i, text in enumerate(texts):
        _text_or_reject(text, f"text {i}", warnings)
        queries.append(Query(text=text, is_sentence=is_sentence, query_id=f"{stem}:{i}"))
    for i, (text, fp_is_sentence, answer) in enumerate(anno.get("false_premise_QA") or []):
        _text_or_reject(text, f"false_premise_QA {i}", warnings)
        queries.append(
            Query(
                text=text,
                is_sentence=bool(fp_is_sentence),
                exists=False,
                answer=str(answer),
                query_id=f"{stem}:fp{i}",
            )
        )
    if not queries:
        raise _Rejected("no query text")
    return queries


def _text_or_reject(text: Any, where: str, warnings: list[str]) -> None:
    """A non-string query fails upstream's templating; a blank one is kept, with a warning."""
    if not isinstance(text, str):
        raise _Rejected(f"{where}: query text is not a string: {text!r}")
    reason = check_text(text)
    if reason:
        warnings.append(f"{where}: {reason}")
