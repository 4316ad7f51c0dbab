"""Turning a scene into upstream annotation records (labelme JSON, COCO annotations, REFER refs).

The records use the exact field names the upstream loaders read, so the readers in this package
are exercised on the same structures they will meet in the real datasets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from dataset_builders.synthetic.language import (
    absent_expression,
    absent_object,
    long_referring_expression,
    reasoning_queries,
    referring_expression,
)
from dataset_builders.synthetic.scene import Scene, Shape
from dataset_builders.synthetic.vocabulary import KINDS

CATEGORY_ID = {k.name: i + 1 for i, k in enumerate(KINDS)}
CATEGORIES = [{"id": i + 1, "name": k.name, "supercategory": "shape"} for i, k in enumerate(KINDS)]


@dataclass(frozen=True)
class RecordConfig:
    """How often the optional upstream features appear."""

    max_texts: int = 3  # ReasonSeg train images carry several rephrasings (upstream: < 6)
    eval_max_texts: int = 2
    sentence_prob: float = 0.5  # ReasonSeg images whose texts are long sentences
    fp_qa_prob_train: float = 0.7  # ReasonSeg JSONs with false_premise_QA
    fp_qa_prob_eval: float = 0.4
    occluded_target_prob: float = 0.5  # prefer a partly covered target when there is one
    flag_shape_prob: float = 0.2  # a deprecated "flag" polygon the reader must drop
    rle_prob: float = 0.2  # unoccluded COCO annotations written as RLE anyway
    max_sentences_per_ref: int = 3
    reasoning_in_refcocog_prob: float = 0.3


def _unique(texts: list[str]) -> list[str]:
    return list(dict.fromkeys(texts))


def _choose(rng: np.random.Generator, pool: list[str], count: int) -> list[str]:
    pool = _unique(pool)
    picks = rng.choice(len(pool), size=min(count, len(pool)), replace=False)
    return [pool[int(i)] for i in picks]


def _labelme_shape(label: str, polygon: np.ndarray) -> dict[str, Any]:
    return {
        "label": label,
        "points": [[float(x), float(y)] for x, y in polygon],
        "group_id": None,
        "shape_type": "polygon",
        "flags": {},
    }


def reason_seg_record(
    scene: Scene, image_name: str, rng: np.random.Generator, *, train: bool, s: RecordConfig
) -> dict[str, Any]:
    """labelme JSON of one ReasonSeg image: one target, its occluders as "ignore" shapes."""
    candidates = [reasoning_queries(i, scene) for i in range(len(scene.shapes))]
    with_reasoning = [i for i, (phrases, _) in enumerate(candidates) if phrases]
    pool_of_targets = with_reasoning or list(range(len(scene.shapes)))
    occluded = [i for i in pool_of_targets if scene.occluders_of(i)]
    if occluded and rng.random() < s.occluded_target_prob:
        pool_of_targets = occluded  # exercises "ignore" shapes more often
    target = pool_of_targets[int(rng.integers(len(pool_of_targets)))]
    phrases, sentences = candidates[target]
    shape = scene.shapes[target]
    is_sentence = bool(sentences) and rng.random() < s.sentence_prob
    pool = sentences if is_sentence else [*phrases, referring_expression(shape, scene, rng)]
    count = int(rng.integers(1, (s.max_texts if train else s.eval_max_texts) + 1))
    shapes = [_labelme_shape("target", shape.polygon)]
    shapes += [
        _labelme_shape("ignore", scene.shapes[j].polygon) for j in scene.occluders_of(target)
    ]
    if rng.random() < s.flag_shape_prob:
        corner = rng.uniform([0, 0], [scene.width * 0.7, scene.height * 0.7])
        extent = rng.uniform(10, 30, size=(3, 2))
        flag = np.round(corner + extent * np.array([[0, 0], [1, 0], [0, 1]]), 2)
        shapes.append(_labelme_shape("flag", flag))
    record: dict[str, Any] = {
        "version": "5.0.1",
        "flags": {},
        "text": _choose(rng, pool, count),
        "is_sentence": is_sentence,
        "shapes": shapes,
        "imagePath": image_name,
        "imageData": None,
        "imageHeight": scene.height,
        "imageWidth": scene.width,
    }
    if rng.random() < (s.fp_qa_prob_train if train else s.fp_qa_prob_eval):
        record["false_premise_QA"] = _false_premise_qa(target, scene, rng, is_sentence)
    return record


def _false_premise_qa(
    target: int, scene: Scene, rng: np.random.Generator, is_sentence: bool
) -> list[list[Any]]:
    """[query, is_sentence, answer] triples about absent objects, answered with a correction."""
    shape = scene.shapes[target]
    triples = []
    seen = set()
    for _ in range(int(rng.integers(1, 3))):
        colour, kind = absent_object(target, scene, rng)
        if (colour, kind) in seen:
            continue
        seen.add((colour, kind))
        query = (
            f"Which part of this picture shows the {colour} {kind}?"
            if is_sentence
            else f"the {colour} {kind}"
        )
        answer = f"There is no {colour} {kind} in this image, but there is a {shape.name}."
        triples.append([query, is_sentence, answer])
    return triples


def coco_segmentation(
    shape: Shape, occluded: bool, rng: np.random.Generator, s: RecordConfig
) -> list[list[float]] | dict[str, Any]:
    """Polygon of the whole shape, or RLE of what is visible when something covers it."""
    if not occluded and rng.random() >= s.rle_prob:
        return [shape.flat_polygon()]
    rle = coco_mask.encode(np.asfortranarray(shape.visible_mask))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def coco_annotation(ann_id: int, image_id: int, shape: Shape, segmentation: Any) -> dict[str, Any]:
    ys, xs = np.nonzero(shape.visible_mask)
    bbox = [
        int(xs.min()),
        int(ys.min()),
        int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1),
    ]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": CATEGORY_ID[shape.kind],
        "segmentation": segmentation,
        "area": float(np.count_nonzero(shape.visible_mask)),
        "bbox": bbox,
        "iscrowd": 0,
    }


def ref_sentences(
    dataset: str, index: int, scene: Scene, rng: np.random.Generator, s: RecordConfig
) -> list[dict[str, Any]]:
    """Sentence dicts of one ref in the flavour of `dataset` (without sent_id)."""
    shape = scene.shapes[index]
    count = int(rng.integers(1, s.max_sentences_per_ref + 1))
    if dataset == "refcoco+":  # RefCOCO+ forbids location words
        texts = [referring_expression(shape, scene, rng, with_location=False) for _ in range(count)]
    elif dataset == "refcocog":
        texts = [long_referring_expression(shape, scene, rng) for _ in range(count)]
        phrases, _ = reasoning_queries(index, scene)
        if phrases and rng.random() < s.reasoning_in_refcocog_prob:
            texts.append(phrases[int(rng.integers(len(phrases)))])
    else:
        texts = [referring_expression(shape, scene, rng) for _ in range(count)]
    sentences = [_sentence(t) for t in _unique(texts)]
    if dataset.startswith("fprefcoco"):
        # FP-RefCOCO: a false premise worded like the true ones, whose correction names the
        # object that is there (`gt_sent`, what the Say score looks for in the answer).
        for sentence in sentences:
            sentence.update(is_false_premise=False, gt_sent=sentence["sent"])
        false = _sentence(absent_expression(index, scene, rng))
        false.update(is_false_premise=True, gt_sent=f"the {shape.colour} {shape.kind}")
        sentences.append(false)
    elif dataset.startswith("R-refcoco"):
        # R-RefCOCO: every sentence says whether its object exists; negatives are denied.
        for sentence in sentences:
            sentence["exist"] = True
        negative = _sentence(absent_expression(index, scene, rng))
        negative["exist"] = False
        sentences.append(negative)
    return sentences


def _sentence(text: str) -> dict[str, Any]:
    return {"sent": text, "raw": text, "tokens": text.replace(",", " ,").split()}
