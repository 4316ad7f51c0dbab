"""Run a READ model over canonical samples and reduce each query to a `QueryResult`.

This is what one Ray Data actor does for a block of samples, kept free of Ray so it can be tested
and reused on its own. Two protocols (upstream-spec §8):

* ``teacher_forced`` (upstream's validation): every query of an image becomes a row whose answer
  "Sure, the segmentation result is [SEG]." is already in the prompt; one forward, no generation.
* ``generate`` (upstream's FP-RefCOCO test): the question alone, batched greedy generation with
  the KV cache; presence = a [SEG] was generated and its mask is non-empty; only the first [SEG]'s
  mask is scored, an answer without [SEG] scores an all-zero mask.

Analysis modes (the paper's <SEG> analysis): ``siou`` scores the binarised similarity map against
the GT; ``points_only`` prompts SAM with the SasP points alone (no [SEG] embedding).
"""

from __future__ import annotations

import dataclasses
import hashlib
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dataset_builders.sample import Sample
from pipelines.config import EvalMode, EvalProtocol
from pipelines.evaluation.predictions_io import encode_rle
from pipelines.evaluation.records import QueryResult
from pipelines.examples import decode_image, evaluation_example, flat_queries
from read_model.analysis import siou_intersection_union
from read_model.batch import collate_train
from read_model.metrics import intersection_union

PROTOCOLS: tuple[str, ...] = typing.get_args(EvalProtocol)  # one list: the config's types
ANALYSIS_MODES: tuple[str, ...] = typing.get_args(EvalMode)


@dataclass
class ScoringOptions:
    protocol: str = "teacher_forced"
    modes: tuple[str, ...] = ("segmentation",)
    max_new_tokens: int = 32
    siou_threshold: float | None = None  # None: the model's sasp.siou_threshold
    overlay_fraction: float = 0.0  # share of queries drawn as overlays (chosen by uid hash)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        unknown = sorted(set(self.modes) - set(ANALYSIS_MODES))
        if unknown:
            raise ValueError(f"unknown evaluation mode(s) {unknown}; valid: {list(ANALYSIS_MODES)}")


def is_overlay_query(uid: str, fraction: float) -> bool:
    """Deterministic choice of overlay queries: the same uids whatever the number of actors."""
    if fraction <= 0:
        return False
    value = int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "big") / 2.0**64
    return value < fraction


@dataclass
class _Query:
    uid: str
    sample: Sample
    flat_index: int
    target_index: int
    text: str
    is_sentence: bool
    exists: bool
    gt_sent: str
    query_id: str


def _queries(sample: Sample) -> list[_Query]:
    out = []
    flat = 0
    for t, target in enumerate(sample.targets):
        for q, query in enumerate(target.queries):
            out.append(_Query(f"{sample.key}/{t}/{q}", sample, flat, t, query.text,
                              query.is_sentence, query.exists, query.gt_sent,
                              query.query_id or f"{sample.key}/{t}/{q}"))
            flat += 1
    return out


def _gt(query: _Query) -> np.ndarray:
    """The GT the query is scored against: its target mask, or all zero for a false premise."""
    sample = query.sample
    if not query.exists:
        return np.zeros((sample.height, sample.width), dtype=np.uint8)
    return sample.targets[query.target_index].mask


@dataclass
class _Outcome:
    """Model output for one query, already on the CPU."""

    mask: Tensor  # [H, W] bool
    exists: bool
    text: str
    points: Tensor  # [K, 2]
    labels: Tensor  # [K]
    similarity: Tensor | None  # [g, g]


OverlayWriter = Callable[[str, np.ndarray, np.ndarray, _Outcome, np.ndarray], str]


class QueryScorer:
    """Scores samples with one model; `overlay_writer(uid, image, gt, outcome, heat)` -> path."""

    def __init__(self, model, options: ScoringOptions, overlay_writer: OverlayWriter | None = None):
        self.model = model.eval()
        self.options = options
        self.overlay_writer = overlay_writer

    @torch.no_grad()
    def score(self, samples: Sequence[Sample]) -> list[QueryResult]:
        samples = [s for s in samples if flat_queries(s)[0]]
        if not samples:
            return []
        queries = [q for s in samples for q in _queries(s)]
        images = {s.key: decode_image(s) for s in samples}
        main = self._run(samples, queries, images, use_seg_embedding=True)
        points_only = None
        if "points_only" in self.options.modes:
            points_only = self._run(samples, queries, images, use_seg_embedding=False)
        results = []
        for k, query in enumerate(queries):
            results.append(self._result(query, images[query.sample.key], main[k],
                                        None if points_only is None else points_only[k]))
        return results

    def _run(self, samples, queries, images, *, use_seg_embedding: bool) -> list[_Outcome]:
        if self.options.protocol == "generate":
            return self._generate(queries, images, use_seg_embedding)
        return self._teacher_forced(samples, images, use_seg_embedding)

    def _teacher_forced(self, samples, images, use_seg_embedding) -> list[_Outcome]:
        model = self.model
        examples = [evaluation_example(s) for s in samples]
        batch = collate_train(examples, model.tokenizer, model.config, model.num_image_tokens)
        batch = batch.to(next(model.parameters()).device)
        out = model.score_teacher_forced(batch, use_seg_embedding=use_seg_embedding)
        seg = out.segments
        outcomes: list[_Outcome] = []
        offset = 0
        for masks in out.masks:
            for j in range(masks.shape[0]):
                s = offset + j
                outcomes.append(_Outcome(
                    mask=masks[j].cpu(), exists=bool(masks[j].any()), text="",
                    points=_cpu(seg.prompt_points, s), labels=_cpu(seg.labels, s),
                    similarity=None if seg.similarity_map is None else seg.similarity_map[s].cpu(),
                ))
            offset += masks.shape[0]
        expected = sum(len(_queries(s)) for s in samples)
        if len(outcomes) != expected:
            raise ValueError(
                f"teacher-forced scoring produced {len(outcomes)} masks for {expected} queries; "
                "a prompt was probably cut by tokenizer.model_max_length"
            )
        return outcomes

    def _generate(self, queries, images, use_seg_embedding) -> list[_Outcome]:
        examples = {}
        for q in queries:
            if q.sample.key not in examples:
                examples[q.sample.key] = evaluation_example(q.sample)
        question_of = [examples[q.sample.key].conversations[q.flat_index][0] for q in queries]
        preds = self.model.predict(
            [images[q.sample.key] for q in queries], question_of,
            max_new_tokens=self.options.max_new_tokens, use_seg_embedding=use_seg_embedding,
        )
        outcomes = []
        for q, p in zip(queries, preds, strict=True):
            if p.masks.shape[0]:
                mask = p.masks[0].cpu()
                outcomes.append(_Outcome(mask, bool(mask.any()), p.text, p.points[0].cpu(),
                                         p.labels[0].cpu(), p.similarity_map[0].cpu()))
            else:
                h, w = q.sample.height, q.sample.width
                outcomes.append(_Outcome(torch.zeros((h, w), dtype=torch.bool), False, p.text,
                                         torch.zeros((0, 2)), torch.zeros(0, dtype=torch.long), None))
        return outcomes

    def _result(self, query: _Query, image: np.ndarray, main: _Outcome,
                points_only: _Outcome | None) -> QueryResult:
        gt = torch.from_numpy(np.ascontiguousarray(_gt(query)))
        inter, union = intersection_union(main.mask[None], gt[None])
        result = QueryResult(
            uid=query.uid, dataset=query.sample.dataset, split=query.sample.split,
            query_id=query.query_id, query_text=query.text, is_sentence=query.is_sentence,
            gt_exists=query.exists, gt_sent=query.gt_sent, text=main.text,
            pred_exists=main.exists, intersection=int(inter[0]), union=int(union[0]),
        )
        heat = None
        size = [(query.sample.height, query.sample.width)]
        has_map = main.similarity is not None and main.similarity.numel() > 0
        draw = self.overlay_writer is not None and is_overlay_query(
            query.uid, self.options.overlay_fraction
        )
        if has_map and draw:
            flat = main.similarity.reshape(1, -1).float()
            heat = self.model.sasp.full_resolution_maps(flat, size)[0]
        if "siou" in self.options.modes and has_map:
            # The grid is already min-max normalised; normalising again leaves it unchanged.
            i, u = siou_intersection_union(main.similarity.reshape(1, -1).float(), size, [gt],
                                           self._siou_config(),
                                           clip_image_size=self.model.sasp.clip_image_size)
            result.siou_intersection, result.siou_union = int(i[0]), int(u[0])
        if points_only is not None:
            i, u = intersection_union(points_only.mask[None], gt[None])
            result.points_only_intersection, result.points_only_union = int(i[0]), int(u[0])
        result.payload = {
            "rle": encode_rle(main.mask.numpy()),
            "points": main.points.tolist(),
            "labels": main.labels.tolist(),
        }
        if draw:
            heat_np = None if heat is None else heat.numpy()
            result.payload["overlay"] = self.overlay_writer(query.uid, image, _gt(query), main, heat_np)
        return result


    def _siou_config(self):
        sasp = self.model.config.sasp
        if self.options.siou_threshold is None:
            return sasp
        return dataclasses.replace(sasp, siou_threshold=self.options.siou_threshold)


def _cpu(values: Tensor | None, index: int) -> Tensor:
    if values is None:
        return torch.zeros((0,))
    return values[index].detach().cpu()
