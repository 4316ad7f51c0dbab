"""The six training sources upstream mixes, and which datasets each one draws from.

`READ:dataloaders/trainval_dataset.py` `HybridDataset` draws a source with probability
rate / sum(rates), then one of its datasets uniformly (`READ:train_read.py` defaults, the
`--*_data` lists). Each source forms its training conversations its own way
(`pipelines.examples.training_example`): ReasonSeg (long queries, literal FP answers), referring
(short answers with `[SEG]`), corrected referring (FP-RefCOCO: corrections naming `gt_sent`),
negative referring (R-RefCOCO: denials), semantic segmentation (class names present or absent)
and VQA (multi-turn dialogs, no mask).
"""

from __future__ import annotations

from typing import Literal

Source = Literal["sem_seg", "refer_seg", "correct_refer_seg", "vqa", "neg_refer_seg",
                 "reason_seg"]

DATASETS_OF: dict[str, tuple[str, ...]] = {
    "sem_seg": ("ade20k", "cocostuff", "pascal_part", "paco_lvis", "mapillary"),
    "refer_seg": ("refclef", "refcoco", "refcoco+", "refcocog"),
    "correct_refer_seg": ("fprefcoco", "fprefcoco+", "fprefcocog"),
    "vqa": ("llava_instruct_150k",),
    "neg_refer_seg": ("R-refcoco", "R-refcoco+", "R-refcocog"),
    "reason_seg": ("reason_seg",),
}
SOURCE_OF: dict[str, Source] = {
    dataset: source for source, datasets in DATASETS_OF.items() for dataset in datasets  # type: ignore[misc]
}
LABEL_MAP_DATASETS = ("ade20k", "cocostuff", "mapillary")
PART_DATASETS = ("pascal_part", "paco_lvis")


def source_of(dataset: str) -> Source:
    """The source a dataset belongs to; a REFER-format set the list does not name (e.g. a
    renamed RefCOCO copy) is referring segmentation, as its reader is the REFER reader."""
    return SOURCE_OF.get(dataset, "refer_seg")


def is_refer_format(dataset: str) -> bool:
    return source_of(dataset) in ("refer_seg", "correct_refer_seg", "neg_refer_seg")
