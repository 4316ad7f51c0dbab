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

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

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


def reader_kind(dataset: str) -> str:
    """Which reader a dataset's folders need: reason_seg, label_map, part, vqa or refer."""
    if dataset == "reason_seg":
        return "reason_seg"
    if dataset in LABEL_MAP_DATASETS:
        return "label_map"
    if dataset in PART_DATASETS:
        return "part"
    if dataset in DATASETS_OF["vqa"]:
        return "vqa"
    return "refer"


def input_paths(root: str | Path, dataset: str, split: str) -> list[Path]:
    """The upstream files and folders a (dataset, split) is read from, the defining one first
    (its absence means the split is not there)."""
    kind = reader_kind(dataset)
    if kind == "reason_seg":
        from dataset_builders.reason_seg import split_folders

        return [folder for _, folder in split_folders(root, split)]
    if kind == "label_map":
        from dataset_builders import sem_seg

        return sem_seg.input_folders(root, dataset, split)
    if kind == "part":
        from dataset_builders import part_seg

        return part_seg.input_folders(root, dataset, split)
    if kind == "vqa":
        from dataset_builders import vqa

        return vqa.input_folders(root, split)
    from dataset_builders.refer import image_folder

    return [Path(root) / "refer_seg" / dataset, image_folder(root, dataset)]


def iter_dataset(root: str | Path, dataset: str, split: str) -> Iterator[Any]:
    """Every Sample | QuarantineEntry of a (dataset, split), through its reader."""
    kind = reader_kind(dataset)
    if kind == "reason_seg":
        from dataset_builders.reason_seg import iter_reason_seg

        return iter_reason_seg(root, split)
    if kind == "label_map":
        from dataset_builders.sem_seg import iter_label_maps

        return iter_label_maps(root, dataset, split)
    if kind == "part":
        from dataset_builders.part_seg import iter_part_images

        return iter_part_images(root, dataset, split)
    if kind == "vqa":
        from dataset_builders.vqa import iter_vqa

        return iter_vqa(root, split)
    from dataset_builders.refer import iter_refer

    return iter_refer(root, dataset, split)
