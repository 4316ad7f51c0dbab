"""Upstream's class rules for label-map semantic segmentation (ADE20K, COCO-Stuff, Mapillary).

`READ:dataloaders/sem_seg_dataset.py` `SemSegDataset.__getitem__`, step by step:

1. the label map is ``np.array(PIL.Image.open(path))``: one class index per pixel;
2. ADE20K: value 0 becomes the ignore label 255, every value drops by one, and the 255 that
   wrapped to 254 is ignore again (so ADE value ``v`` is class ``v - 1``);
   COCO-Stuff: every class whose name contains ``-`` (the "-other" / "-stuff" / material
   variants: 28 of 182) is painted ignore; Mapillary keeps its values as they are;
3. the classes present are the unique values other than 255; an image with none is skipped
   (upstream draws another); a value with no name fails upstream's lookup;
4. the names of the present classes are sampled, and each sampled name's mask is
   ``label == classes.index(name)``: the *first* id carrying that name;
5. false premises are drawn from the names of every class id that is not present (COCO-Stuff's
   ignored classes included, as upstream's ``range(len(classes))`` includes them).

This module computes 2, 3, 4 and 5 for a whole image at once: one mask per present class, with
the ignore pixels kept as 255 (training reads them as background, exactly upstream's
``label == id``; evaluation excludes them), and the absent names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dataset_builders.sample import MASK_IGNORE, MASK_OBJECT

IGNORE_LABEL = 255  # upstream's BaseDataset.ignore_label
ADE20K_UNLABELLED = 0  # ADE20K's "other" value, ignored
ADE20K_WRAPPED = 254  # 255 - 1 in uint8: upstream re-marks it ignore
IGNORED_NAME_MARK = "-"  # COCO-Stuff classes whose name contains it are ignored


def ade20k_class_ids(raw: np.ndarray) -> np.ndarray:
    """Class ids of an ADE20K label map: 0 -> 255, v -> v - 1, and 255 stays 255."""
    label = raw.astype(np.int64)
    shifted = label - 1
    ignored = (label == ADE20K_UNLABELLED) | (shifted == ADE20K_WRAPPED)
    shifted[ignored] = IGNORE_LABEL
    return shifted


def cocostuff_class_ids(raw: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """Class ids of a COCO-Stuff label map: the ids of hyphenated names become 255."""
    label = raw.astype(np.int64)
    ignored_ids = [i for i, name in enumerate(classes) if IGNORED_NAME_MARK in name]
    if ignored_ids:
        label[np.isin(label, ignored_ids)] = IGNORE_LABEL
    return label


def mapillary_class_ids(raw: np.ndarray) -> np.ndarray:
    """Mapillary's values are its class ids (255, if any, is ignored like everywhere)."""
    return raw.astype(np.int64)


@dataclass
class ClassMasks:
    """One image's classes as upstream sees them."""

    present: list[int] = field(default_factory=list)  # ids, ascending (np.unique order)
    masks: list[np.ndarray] = field(default_factory=list)  # uint8 {0, 1, 255} per present id
    absent: list[int] = field(default_factory=list)  # ids never seen in the image, ascending
    warnings: list[str] = field(default_factory=list)


class UnknownClassError(ValueError):
    """The label map holds a value the class list has no name for (upstream's IndexError)."""


def class_masks(label: np.ndarray, classes: Sequence[str]) -> ClassMasks:
    """Per present class: its mask by upstream's first-id-of-the-name rule, ignore kept as 255."""
    values = np.unique(label)
    present = [int(v) for v in values if v != IGNORE_LABEL]
    unknown = [v for v in present if v < 0 or v >= len(classes)]
    if unknown:
        raise UnknownClassError(
            f"label values {unknown[:5]} have no class name (the list has {len(classes)} "
            "classes; upstream's lookup fails on them)")
    first_id: dict[str, int] = {}
    for index, name in enumerate(classes):
        first_id.setdefault(name, index)
    ignore = label == IGNORE_LABEL
    out = ClassMasks(present=present)
    for class_id in present:
        name = classes[class_id]
        source = first_id[name]
        if source != class_id:
            out.warnings.append(
                f"class id {class_id} shares the name {name!r} with id {source}; its mask is "
                f"label == {source}, as upstream's classes.index(name) gives")
        mask = np.where(label == source, MASK_OBJECT, 0).astype(np.uint8)
        mask[ignore] = MASK_IGNORE
        out.masks.append(mask)
    seen = set(present)
    out.absent = [i for i in range(len(classes)) if i not in seen]
    return out
