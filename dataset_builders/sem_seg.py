"""Readers of the label-map semantic-segmentation layouts: ADE20K, COCO-Stuff, Mapillary Vistas.

The folders upstream opens (`READ:dataloaders/sem_seg_dataset.py` `init_ade20k`,
`init_cocostuff`, `init_mapillary`, under the dataset root upstream calls ``dataset/``):

| dataset | label maps | images | records listed from |
|---|---|---|---|
| ade20k | ``ade20k/annotations/<training, validation>/N.png`` | ``ade20k/images/<...>/N.jpg`` | images (and stray label maps) |
| cocostuff | ``cocostuff/<train2017, val2017>/N.png`` | ``coco/<train2017, val2017>/N.jpg`` | label maps |
| mapillary | ``mapillary/<training, validation>/v2.0/labels/N.png`` | ``mapillary/<...>/images/N.jpg`` | label maps |

One Sample per image: a Target per class present (its mask by upstream's rule,
`dataset_builders.label_maps`; the query is the class name) and the names of the classes it
lacks as `absent_classes`. Split names are the project's ("train", "val"). A record upstream's
loader fails on (a missing or undecodable file, a label map that is not one index per pixel or
not the image's size, a value with no class name) is quarantined with the reason; an image with
no class present is quarantined too, since upstream skips it and draws another.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dataset_builders import class_lists
from dataset_builders.label_maps import (
    UnknownClassError,
    ade20k_class_ids,
    class_masks,
    cocostuff_class_ids,
    mapillary_class_ids,
)
from dataset_builders.sample import (
    ClassName,
    QuarantineEntry,
    Query,
    Sample,
    Target,
    WarningEntry,
    make_key,
)
from dataset_builders.validation import check_image


@dataclass(frozen=True)
class LabelMapLayout:
    """Where one label-map dataset keeps a split, and how its values become class ids."""

    dataset: str
    folder: str  # the dataset's folder under the root (class lists live here)
    split_dirs: dict[str, str]  # project split -> upstream folder name
    label_dir: str  # "{split}" is replaced by the upstream folder name
    image_dir: str
    list_images: bool  # records are listed from the images too (ADE20K), not only the labels
    load_classes: Callable[[Path], list[str]]
    class_ids: Callable[[np.ndarray, Sequence[str]], np.ndarray]
    class_file: str  # the class list the dataset folder may carry (Mapillary: must)

    def split_dir(self, split: str) -> str:
        if split not in self.split_dirs:
            raise ValueError(f"{self.dataset} has no split {split!r}; known: "
                             f"{sorted(self.split_dirs)}")
        return self.split_dirs[split]

    def labels(self, root: str | Path, split: str) -> Path:
        return Path(root) / self.label_dir.format(split=self.split_dir(split))

    def images(self, root: str | Path, split: str) -> Path:
        return Path(root) / self.image_dir.format(split=self.split_dir(split))

    def classes(self, root: str | Path) -> list[str]:
        return self.load_classes(Path(root) / self.folder)


LAYOUTS: dict[str, LabelMapLayout] = {
    "ade20k": LabelMapLayout(
        "ade20k", "ade20k", {"train": "training", "val": "validation"},
        "ade20k/annotations/{split}", "ade20k/images/{split}", True,
        class_lists.ade20k_classes, lambda raw, _: ade20k_class_ids(raw),
        class_lists.ADE20K_FILE),
    "cocostuff": LabelMapLayout(
        "cocostuff", "cocostuff", {"train": "train2017", "val": "val2017"},
        "cocostuff/{split}", "coco/{split}", False,
        class_lists.cocostuff_classes, cocostuff_class_ids, class_lists.COCOSTUFF_FILE),
    "mapillary": LabelMapLayout(
        "mapillary", "mapillary", {"train": "training", "val": "validation"},
        "mapillary/{split}/v2.0/labels", "mapillary/{split}/images", False,
        class_lists.mapillary_classes, lambda raw, _: mapillary_class_ids(raw),
        class_lists.MAPILLARY_CONFIG),
}


def layout(dataset: str) -> LabelMapLayout:
    if dataset not in LAYOUTS:
        raise ValueError(f"{dataset!r} is not a label-map dataset; known: {sorted(LAYOUTS)}")
    return LAYOUTS[dataset]


def input_folders(root: str | Path, dataset: str, split: str) -> list[Path]:
    """What a build reads: the label folder first (its absence means the split is absent), the
    image folder, and the class list file the dataset folder may carry."""
    spec = layout(dataset)
    return [spec.labels(root, split), spec.images(root, split),
            Path(root) / spec.folder / spec.class_file]


def list_records(root: str | Path, dataset: str, split: str) -> list[str]:
    """Record stems in name order; a missing label folder is an error (a typo in a split)."""
    spec = layout(dataset)
    labels = spec.labels(root, split)
    if not labels.is_dir():
        raise FileNotFoundError(f"{dataset} label folder not found: {labels}")
    stems = {p.stem for p in labels.glob("*.png")}
    if spec.list_images:
        stems |= {p.stem for p in spec.images(root, split).glob("*.jpg")}
    return sorted(stems)


def iter_label_maps(root: str | Path, dataset: str, split: str,
                    stems: Sequence[str] | None = None) -> Iterator[Sample | QuarantineEntry]:
    """Samples of a split (or of the given stems), in stem order."""
    spec = layout(dataset)
    classes = spec.classes(root)  # a dataset-level error: raised, not quarantined
    for stem in (list_records(root, dataset, split) if stems is None else stems):
        yield read_record(root, spec, split, stem, classes)


def read_label_map(data: bytes) -> tuple[np.ndarray | None, str | None]:
    """(values, None) as ``np.array(Image.open(path))`` gives them, or (None, reason)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            values = np.array(image)
    except Exception as error:  # PIL raises many types for bad data; all mean "undecodable"
        return None, f"label map does not decode: {type(error).__name__}: {error}"
    if values.ndim != 2:
        return None, (f"label map has shape {list(values.shape)}: upstream needs one class "
                      "index per pixel (a palette or grey PNG)")
    if not np.issubdtype(values.dtype, np.integer) and values.dtype != np.bool_:
        return None, f"label map holds {values.dtype} values, not class indices"
    return values, None


def read_record(root: str | Path, spec: LabelMapLayout, split: str, stem: str,
                classes: Sequence[str]) -> Sample | QuarantineEntry:
    """One image + label map as a Sample, or the reason it cannot be one."""
    image_path = spec.images(root, split) / f"{stem}.jpg"
    label_path = spec.labels(root, split) / f"{stem}.png"
    if not label_path.is_file():
        return QuarantineEntry(str(label_path), stem, f"annotation missing: {label_path.name} "
                               "not found")
    if not image_path.is_file():
        return QuarantineEntry(str(image_path), stem, f"image missing: {image_path} not found")
    image_bytes = image_path.read_bytes()
    size, reason = check_image(image_bytes)
    if reason:
        return QuarantineEntry(str(image_path), stem, reason)
    raw, reason = read_label_map(label_path.read_bytes())
    if reason:
        return QuarantineEntry(str(label_path), stem, reason)
    width, height = size
    if raw.shape != (height, width):
        return QuarantineEntry(str(label_path), stem,
                               f"label map is {raw.shape[1]}x{raw.shape[0]} but the image is "
                               f"{width}x{height}")
    try:
        found = class_masks(spec.class_ids(raw, classes), classes)
    except UnknownClassError as error:
        return QuarantineEntry(str(label_path), stem, f"unknown class id: {error}")
    if not found.present:
        return QuarantineEntry(str(label_path), stem, "no class present: every pixel is ignored "
                               "(upstream skips the image and draws another)")
    targets = [
        Target(mask=mask, target_id=str(class_id),
               queries=[Query(text=classes[class_id], is_sentence=False,
                              query_id=f"{stem}:{class_id}")])
        for class_id, mask in zip(found.present, found.masks, strict=True)
    ]
    return Sample(
        key=make_key(spec.dataset, split, stem),
        dataset=spec.dataset,
        split=split,
        image_bytes=image_bytes,
        width=width,
        height=height,
        targets=targets,
        source={"image": str(image_path), "annotation": str(label_path), "image_id": stem},
        absent_classes=[ClassName(classes[i]) for i in found.absent],
        warnings=[WarningEntry(str(label_path), stem, w) for w in found.warnings],
    )
