"""Writing a whole synthetic dataset tree in the upstream on-disk layout: all six sources.

Each image draws from its own generator seeded by (seed, index), so output is byte-identical for
a seed and the first images do not change when more are requested. A third of the scenes become
ReasonSeg images; the rest form one COCO-style image pool that every REFER-format dataset
annotates (RefCOCO, RefCOCO+, RefCOCOg, FP-RefCOCO, R-RefCOCO), as they share COCO train2014.
Further scene streams, each seeded by (seed, stream, index), fill the semantic-segmentation
layouts (ADE20K, COCO-Stuff, Mapillary, PACO-LVIS, PASCAL-Part) and LLaVA-Instruct's VQA file;
COCO-Stuff, PACO-LVIS and the VQA conversations share one `coco/train2017` pool, as upstream's do.
"""

from __future__ import annotations

import json
import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dataset_builders.synthetic import semantic
from dataset_builders.synthetic.dialogs import vqa_entry
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
# R-RefCOCO annotates the same pool from its own random stream, so adding it left the other
# flavours' sentences as they were.
NEG_REFER_FLAVOUR = ReferFlavour("R-refcoco", "unc_exclude_unified", ("testA", "testB"))
# Random streams of the extra layouts (stream 0 is the ReasonSeg / REFER scene sequence).
STREAMS = {"coco": 1, "ade20k": 2, "mapillary": 3, "pascal_part": 4, "neg_refer": 5}
COCO_TRAIN_DIR = Path("coco/train2017")


@dataclass(frozen=True)
class GeneratorConfig:
    images: int = 24
    reason_seg_every: int = 3  # every third scene is a ReasonSeg image
    # Scenes per extra layout group (COCO pool, ADE20K, Mapillary, PASCAL-Part); None:
    # max(2, images // 6).
    mix_images: int | None = None
    scene: SceneConfig = field(default_factory=SceneConfig)
    records: RecordConfig = field(default_factory=RecordConfig)

    def extra_images(self, images: int) -> int:
        return self.mix_images if self.mix_images is not None else max(2, images // 6)


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
    flavours = (*REFER_FLAVOURS, NEG_REFER_FLAVOUR)
    refs: dict[str, list[dict[str, Any]]] = {f.name: [] for f in flavours}
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
        neg_rng = np.random.default_rng([seed, STREAMS["neg_refer"], index])
        for shape_index, shape in enumerate(scene.shapes):
            ann_id = len(annotations) + 1
            occluded = bool(scene.occluders_of(shape_index))
            segmentation = coco_segmentation(shape, occluded, rng, settings.records)
            annotations.append(coco_annotation(ann_id, image_id, shape, segmentation))
            for flavour in flavours:
                stream = neg_rng if flavour is NEG_REFER_FLAVOUR else rng
                sentences = ref_sentences(flavour.name, shape_index, scene, stream,
                                          settings.records)
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
    for flavour in flavours:
        folder = root / "refer_seg" / flavour.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "instances.json").write_text(instances_text, encoding="utf-8")
        with open(folder / f"refs({flavour.split_by}).p", "wb") as handle:
            pickle.dump(refs[flavour.name], handle, protocol=PICKLE_PROTOCOL)
        refer_summary[flavour.name] = dict(Counter(r["split"] for r in refs[flavour.name]))
    extra = settings.extra_images(total)
    return {
        "root": str(root),
        "seed": seed,
        "images": total,
        "reason_seg_images": dict(reason_counts),
        "refer_images": len(coco_images),
        "refer_annotations": len(annotations),
        "refer_refs_per_split": refer_summary,
        **write_mix_layouts(root, seed, extra, settings.scene),
    }


def _scene(seed: int, stream: str, index: int, s: SceneConfig):
    rng = np.random.default_rng([seed, STREAMS[stream], index])
    return sample_scene(rng, s), rng


def write_mix_layouts(root: Path, seed: int, count: int, s: SceneConfig) -> dict[str, Any]:
    """The semantic-segmentation and VQA layouts, `count` scenes per stream (train split)."""
    semantic.write_class_lists(root)
    paco = semantic.PartFile(semantic.paco_categories())
    entries = []
    for index in range(count):  # one COCO train2017 pool: COCO-Stuff, PACO-LVIS, VQA
        scene, rng = _scene(seed, "coco", index, s)
        stem = f"{index + 1:012d}"
        (root / COCO_TRAIN_DIR).mkdir(parents=True, exist_ok=True)
        (root / COCO_TRAIN_DIR / f"{stem}.jpg").write_bytes(scene.jpeg)
        semantic.write_label_map(root / "cocostuff/train2017" / f"{stem}.png",
                                 semantic.cocostuff_label(scene))
        paco.add_image(index + 1, f"train2017/{stem}.jpg", scene)
        semantic.add_paco(paco, index + 1, scene)
        entries.append(vqa_entry(stem, f"{stem}.jpg", scene, rng))
    paco.write(root / "vlpart/paco/annotations/paco_lvis_v1_train.json")
    vqa_file = root / "llava_dataset" / "llava_instruct_150k.json"
    vqa_file.parent.mkdir(parents=True, exist_ok=True)
    vqa_file.write_text(json.dumps(entries, indent=1), encoding="utf-8")
    for index in range(count):
        scene, _ = _scene(seed, "ade20k", index, s)
        stem = f"ADE_train_{index + 1:08d}"
        images = root / "ade20k/images/training"
        images.mkdir(parents=True, exist_ok=True)
        (images / f"{stem}.jpg").write_bytes(scene.jpeg)
        semantic.write_label_map(root / "ade20k/annotations/training" / f"{stem}.png",
                                 semantic.ade20k_label(scene))
    palette = semantic.mapillary_palette()
    for index in range(count):
        scene, _ = _scene(seed, "mapillary", index, s)
        stem = f"synthetic_{index + 1:06d}"
        images = root / "mapillary/training/images"
        images.mkdir(parents=True, exist_ok=True)
        (images / f"{stem}.jpg").write_bytes(scene.jpeg)
        semantic.write_label_map(root / "mapillary/training/v2.0/labels" / f"{stem}.png",
                                 semantic.mapillary_label(scene), palette)
    pascal = semantic.PartFile(semantic.pascal_part_categories())
    voc = root / "vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages"
    voc.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        scene, _ = _scene(seed, "pascal_part", index, s)
        name = f"2008_{index + 1:06d}.jpg"
        (voc / name).write_bytes(scene.jpeg)
        pascal.add_image(index + 1, name, scene)
        semantic.add_pascal_part(pascal, index + 1, scene)
    pascal.write(root / "vlpart/pascal_part/train.json")
    return {"coco_images": count, "ade20k_images": count, "mapillary_images": count,
            "pascal_part_images": count, "vqa_conversations": len(entries),
            "paco_annotations": len(paco.annotations),
            "pascal_part_annotations": len(pascal.annotations)}
