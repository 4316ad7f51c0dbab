"""Writing a whole synthetic dataset tree in the upstream on-disk layout.

Each image draws from its own generator seeded by (seed, index), so output is byte-identical for
a seed and the first images do not change when more are requested. A third of the scenes become
ReasonSeg images; the rest form one COCO-style image pool that every REFER-format dataset
annotates, as RefCOCO, RefCOCO+ and RefCOCOg share COCO train2014.
"""

from __future__ import annotations

import json
import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dataset_builders.synthetic.records import (
    CATEGORIES,
    RecordConfig,
    coco_annotation,
    coco_segmentation,
    reason_seg_record,
    ref_sentences,
)
from dataset_builders.synthetic.scene import SceneConfig, sample_scene

REFER_IMAGE_DIR = Path("refer_seg/images/mscoco/images/train2014")
REASON_SEG_DIR = Path("reason_seg/ReasonSeg")
PICKLE_PROTOCOL = 2  # what Python 2's cPickle wrote for the original REFER files


@dataclass(frozen=True)
class ReferFlavour:
    """One REFER-format dataset: its refs file name and how test images are split."""

    name: str
    split_by: str
    test_splits: tuple[str, str]  # the split names given to the two test slices


REFER_FLAVOURS: tuple[ReferFlavour, ...] = (
    ReferFlavour("refcoco", "unc", ("testA", "testB")),  # classic file name
    ReferFlavour("refcoco+", "unc_exclude_unified", ("testA", "testB")),  # SESAME file name
    ReferFlavour("refcocog", "umd", ("test", "test")),
    ReferFlavour("fprefcoco", "berkeley_exclude_unified", ("test", "test")),
)


@dataclass(frozen=True)
class GeneratorConfig:
    images: int = 24
    reason_seg_every: int = 3  # every third scene is a ReasonSeg image
    scene: SceneConfig = field(default_factory=SceneConfig)
    records: RecordConfig = field(default_factory=RecordConfig)


def reason_seg_split(index: int) -> str:
    return ("train", "train", "train", "val", "test")[index % 5]


def refer_split_slot(index: int) -> int:
    """0 train, 1 val, 2 and 3 the two test slices (70 / 10 / 10 / 10 %)."""
    return (0, 0, 0, 0, 0, 0, 0, 1, 2, 3)[index % 10]


def _split_name(slot: int, flavour: ReferFlavour) -> str:
    return ("train", "val", *flavour.test_splits)[slot]


def generate_dataset(
    out: str | Path,
    seed: int = 0,
    images: int | None = None,
    settings: GeneratorConfig | None = None,
) -> dict[str, Any]:
    """Write the tree under `out` and return a summary of what was written."""
    settings = settings or GeneratorConfig()
    total = settings.images if images is None else images
    root = Path(out)
    (root / REFER_IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        (root / REASON_SEG_DIR / split).mkdir(parents=True, exist_ok=True)

    reason_counts: Counter[str] = Counter()
    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    refs: dict[str, list[dict[str, Any]]] = {f.name: [] for f in REFER_FLAVOURS}
    next_sent_id = dict.fromkeys(refs, 0)
    reason_index = refer_index = 0
    for index in range(total):
        rng = np.random.default_rng([seed, index])
        scene = sample_scene(rng, settings.scene)
        if index % settings.reason_seg_every == 0:
            split = reason_seg_split(reason_index)
            name = f"scene_{index:06d}"
            record = reason_seg_record(
                scene, f"{name}.jpg", rng, train=split == "train", s=settings.records
            )
            folder = root / REASON_SEG_DIR / split
            (folder / f"{name}.jpg").write_bytes(scene.jpeg)
            (folder / f"{name}.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
            reason_counts[split] += 1
            reason_index += 1
            continue
        image_id = refer_index + 1
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        (root / REFER_IMAGE_DIR / file_name).write_bytes(scene.jpeg)
        coco_images.append(
            {"id": image_id, "file_name": file_name, "height": scene.height, "width": scene.width}
        )
        slot = refer_split_slot(refer_index)
        for shape_index, shape in enumerate(scene.shapes):
            ann_id = len(annotations) + 1
            occluded = bool(scene.occluders_of(shape_index))
            segmentation = coco_segmentation(shape, occluded, rng, settings.records)
            annotations.append(coco_annotation(ann_id, image_id, shape, segmentation))
            for flavour in REFER_FLAVOURS:
                sentences = ref_sentences(flavour.name, shape_index, scene, rng, settings.records)
                for sentence in sentences:
                    sentence["sent_id"] = next_sent_id[flavour.name]
                    next_sent_id[flavour.name] += 1
                refs[flavour.name].append(
                    {
                        "ref_id": ann_id,
                        "ann_id": ann_id,
                        "image_id": image_id,
                        "category_id": annotations[-1]["category_id"],
                        "split": _split_name(slot, flavour),
                        "sentences": sentences,
                        "sent_ids": [s["sent_id"] for s in sentences],
                        "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
                    }
                )
        refer_index += 1

    instances = {
        "info": {"description": "synthetic shapes in the COCO instances format"},
        "images": coco_images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    instances_text = json.dumps(instances, separators=(",", ":"))
    refer_summary: dict[str, dict[str, int]] = {}
    for flavour in REFER_FLAVOURS:
        folder = root / "refer_seg" / flavour.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "instances.json").write_text(instances_text, encoding="utf-8")
        with open(folder / f"refs({flavour.split_by}).p", "wb") as handle:
            pickle.dump(refs[flavour.name], handle, protocol=PICKLE_PROTOCOL)
        refer_summary[flavour.name] = dict(Counter(r["split"] for r in refs[flavour.name]))
    return {
        "root": str(root),
        "seed": seed,
        "images": total,
        "reason_seg_images": dict(reason_counts),
        "refer_images": len(coco_images),
        "refer_annotations": len(annotations),
        "refer_refs_per_split": refer_summary,
    }
