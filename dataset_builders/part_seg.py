"""Readers of the COCO-format part datasets upstream trains on: PACO-LVIS and PASCAL-Part.

`READ:dataloaders/sem_seg_dataset.py` (`init_paco_lvis`, `init_pascal_part`, `__getitem__`):

* PACO-LVIS: ``vlpart/paco/annotations/paco_lvis_v1_<split>.json``, images at
  ``coco/<file_name>`` (file names carry their ``train2017/`` folder). A category name is an
  object or ``object:part``; each side loses its LVIS disambiguation suffix (``"_(...)"``):
  ``"bowl_(dish):rim"`` is the part ``rim`` of ``bowl``. Underscores stay (``trash_can``).
* PASCAL-Part: ``vlpart/pascal_part/<split>.json``, images at
  ``vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/<file_name>``; every name is
  ``object:part``.

Upstream samples *annotations* (instances), not classes: each annotation becomes a Target with
its own mask (pycocotools' ``annToMask``) and one query naming its category (the object in
`Query.text`, the part in `Query.part`; the "dog head" / "the head of the dog" wording is drawn
per training example). The categories with no annotation in the image are its false-premise
pool (`Sample.absent_classes`). An image without annotations is quarantined (upstream skips it
and draws another); an annotation pycocotools cannot decode is quarantined alone and the image
keeps the others (its category still counts as present, so it is never offered as absent).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataset_builders.masks import decode_coco_segmentation
from dataset_builders.sample import (
    ClassName,
    QuarantineEntry,
    Query,
    Sample,
    Target,
    WarningEntry,
    make_key,
)
from dataset_builders.validation import (
    check_coco_segmentation,
    check_image,
    check_size,
    check_true_premise_mask,
)

LVIS_SUFFIX = "_("  # "bow_(weapon)" -> "bow"
PART_SEPARATOR = ":"
IMAGE_ID_DIGITS = 12  # keys carry zero-padded ids, so key order is image-id order


class PartFormatError(ValueError):
    """The annotation file itself is missing or malformed (the build stops on it)."""


def paco_class(name: str) -> ClassName:
    """Upstream's PACO-LVIS name rule: split on ':', drop each side's ``_(...)`` suffix."""
    pieces = name.strip().split(PART_SEPARATOR)
    if len(pieces) == 1:
        return ClassName(pieces[0].split(LVIS_SUFFIX)[0])
    if len(pieces) == 2:
        obj, part = pieces
        return ClassName(obj.split(LVIS_SUFFIX)[0], part.split(LVIS_SUFFIX)[0])
    raise PartFormatError(f"category name {name!r} has more than one {PART_SEPARATOR!r} "
                          "(upstream asserts object or object:part)")


def pascal_part_class(name: str) -> ClassName:
    """Upstream's PASCAL-Part rule: exactly ``object:part``."""
    pieces = name.strip().split(PART_SEPARATOR)
    if len(pieces) != 2:
        raise PartFormatError(f"category name {name!r} is not object:part (upstream unpacks "
                              "exactly two names)")
    return ClassName(pieces[0], pieces[1])


@dataclass(frozen=True)
class PartLayout:
    dataset: str
    annotation: str  # "{split}" is replaced by the split name
    image_dir: str
    name_rule: Any  # str -> ClassName

    def annotation_file(self, root: str | Path, split: str) -> Path:
        return Path(root) / self.annotation.format(split=split)

    def image_folder(self, root: str | Path) -> Path:
        return Path(root) / self.image_dir


LAYOUTS: dict[str, PartLayout] = {
    "paco_lvis": PartLayout("paco_lvis", "vlpart/paco/annotations/paco_lvis_v1_{split}.json",
                            "coco", paco_class),
    "pascal_part": PartLayout("pascal_part", "vlpart/pascal_part/{split}.json",
                              "vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages",
                              pascal_part_class),
}


def layout(dataset: str) -> PartLayout:
    if dataset not in LAYOUTS:
        raise ValueError(f"{dataset!r} is not a part dataset; known: {sorted(LAYOUTS)}")
    return LAYOUTS[dataset]


def input_folders(root: str | Path, dataset: str, split: str) -> list[Path]:
    """The annotation file first (its absence means the split is absent), then the images."""
    spec = layout(dataset)
    return [spec.annotation_file(root, split), spec.image_folder(root)]


@dataclass
class PartIndex:
    """One annotation file, loaded once: what every image of the split shares."""

    dataset: str
    split: str
    annotation_file: Path
    image_folder: Path
    images: dict[int, dict[str, Any]]
    annotations: dict[int, list[dict[str, Any]]]  # image id -> its annotations, file order
    classes: dict[int, ClassName]  # category id -> name, file order

    @property
    def image_ids(self) -> list[int]:
        return sorted(self.images)


def load_part_index(root: str | Path, dataset: str, split: str) -> PartIndex:
    """Read and check the split's COCO file; problems with the file itself raise."""
    spec = layout(dataset)
    path = spec.annotation_file(root, split)
    if not path.is_file():
        raise PartFormatError(f"{dataset} annotation file not found: {path}")
    try:
        data = json.loads(path.read_bytes())
        images = {int(im["id"]): im for im in data["images"]}
        categories = [(int(c["id"]), str(c["name"])) for c in data["categories"]]
        annotations: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for ann in data["annotations"]:
            annotations[int(ann["image_id"])].append(ann)
    except (ValueError, KeyError, TypeError) as error:
        raise PartFormatError(f"{path}: not a COCO annotation file: {error!r}") from error
    classes = {cat_id: spec.name_rule(name) for cat_id, name in categories}
    return PartIndex(dataset, split, path, spec.image_folder(root), images, dict(annotations),
                     classes)


def iter_part_images(root: str | Path, dataset: str, split: str,
                     image_ids: Sequence[int] | None = None) -> Iterator[Sample | QuarantineEntry]:
    """Samples of a split (or of the given image ids), in image-id order."""
    index = load_part_index(root, dataset, split)
    for image_id in (index.image_ids if image_ids is None else image_ids):
        yield from read_image(index, int(image_id))


def read_image(index: PartIndex, image_id: int) -> Iterator[Sample | QuarantineEntry]:
    """The image's Sample (and a QuarantineEntry per annotation it had to drop), or the reason
    the image cannot be one."""
    source = str(index.annotation_file)
    record = f"image {image_id}"
    info = index.images.get(image_id)
    if info is None:
        yield QuarantineEntry(source, record, "image_id not in the annotation file")
        return
    image_path = index.image_folder / str(info.get("file_name", ""))
    if not image_path.is_file():
        yield QuarantineEntry(str(image_path), record, f"image missing: {image_path} not found")
        return
    image_bytes = image_path.read_bytes()
    size, reason = check_image(image_bytes)
    if reason is None:  # annToMask draws at the annotation file's size
        reason = check_size(size, (int(info.get("width", -1)), int(info.get("height", -1))))
    if reason:
        yield QuarantineEntry(str(image_path), record, reason)
        return
    anns = index.annotations.get(image_id, [])
    if not anns:
        yield QuarantineEntry(source, record, "no annotations (upstream skips the image and "
                              "draws another)")
        return
    unknown = sorted({a.get("category_id") for a in anns} - set(index.classes), key=str)
    if unknown:
        yield QuarantineEntry(source, record, f"unknown class id: category ids {unknown} are "
                              "not in the file's categories (upstream's lookup fails)")
        return
    width, height = size
    targets, warnings = [], []
    for ann in anns:
        where = f"ann {ann.get('id')}"
        segmentation = ann.get("segmentation")
        reason = check_coco_segmentation(segmentation, width, height)
        if reason:
            yield QuarantineEntry(source, where, f"{reason} (the image keeps its other "
                                  "annotations)")
            continue
        mask = decode_coco_segmentation(segmentation, height, width)
        reason = check_true_premise_mask(mask)
        if reason:
            warnings.append(f"{where}: {reason} (kept: upstream trains on it as it is)")
        name = index.classes[ann["category_id"]]
        targets.append(Target(mask=mask, target_id=str(ann.get("id")), queries=[
            Query(text=name.name, part=name.part, is_sentence=False, query_id=str(ann.get("id")))
        ]))
    if not targets:
        yield QuarantineEntry(source, record, "every annotation was quarantined")
        return
    present = {ann["category_id"] for ann in anns}
    yield Sample(
        key=make_key(index.dataset, index.split, f"{image_id:0{IMAGE_ID_DIGITS}d}"),
        dataset=index.dataset,
        split=index.split,
        image_bytes=image_bytes,
        width=width,
        height=height,
        targets=targets,
        source={"image": str(image_path), "annotation": source, "image_id": str(image_id)},
        absent_classes=[name for cat_id, name in index.classes.items() if cat_id not in present],
        warnings=[WarningEntry(source, record, w) for w in warnings],
    )
