"""Run a READ model over canonical samples and reduce each query to a `QueryResult`.

This is what one Ray Data actor does for a block of samples, kept free of Ray so it can be tested
and reused on its own. Two protocols (`READ:train_read.py` validate, `READ:test_read.py`):

* ``teacher_forced`` (upstream's validation): every scored query of an image becomes a row whose
  answer (LISA's "Sure, the segmentation result is [SEG]." for ReasonSeg, the drawn answer for
  RefCOCO) is already in the prompt; one forward, no generation.
* ``generate`` (upstream's FP-RefCOCO test): the question alone, batched greedy generation with
  the KV cache up to `max_new_tokens` (upstream: 512), stopping once every row has written EOS;
  presence = a [SEG] was generated and its mask is non-empty; only the first [SEG]'s mask is
  scored, an answer without [SEG] scores an all-zero mask.

Which queries and prompts: `pipelines.examples.evaluation_example` (ReasonSeg's first query, or
every query under the "all_queries" name; RefCOCO-family prompts from `prompts`, the table
`pipelines.evaluation.prompt_plan` draws as upstream does, else LISA's fixed question).

Analysis modes (the paper's <SEG> analysis, read_model.analysis): ``siou`` scores the binarised
similarity map against the GT; ``points_only_tuned`` prompts READ's fine-tuned decoder with the
SasP points alone (no [SEG] embedding); ``points_only_base_sam`` prompts the off-the-shelf SAM
(`base_sam_checkpoint`) with the same points, multimask, best score, as upstream's only code for
it did. ``points_only`` is accepted as the old name of ``points_only_tuned``.
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
from pipelines.config import EvalMode, EvalProtocol, ReasonSegQueries
from pipelines.evaluation.predictions_io import encode_rle
from pipelines.evaluation.records import QueryResult
from pipelines.examples import (
    decode_image,
    evaluation_example,
    evaluation_queries,
    evaluation_split,
    query_uid,
)
from read_model.analysis import BaseSamPointsOnly, siou_intersection_union
from read_model.batch import collate_train
from read_model.metrics import intersection_union

PROTOCOLS: tuple[str, ...] = typing.get_args(EvalProtocol)  # one list: the config's types
MODE_ALIASES = {"points_only": "points_only_tuned"}
ANALYSIS_MODES: tuple[str, ...] = tuple(m for m in typing.get_args(EvalMode) if m not in MODE_ALIASES)
REASON_SEG_QUERIES: tuple[str, ...] = typing.get_args(ReasonSegQueries)
UPSTREAM_MAX_NEW_TOKENS = 512  # READ:test_read.py generates up to 512 tokens


@dataclass
class ScoringOptions:
    protocol: str = "teacher_forced"
    modes: tuple[str, ...] = ("segmentation",)
    max_new_tokens: int = UPSTREAM_MAX_NEW_TOKENS
    siou_threshold: float | None = None  # None: the model's sasp.siou_threshold
    overlay_fraction: float = 0.0  # share of queries drawn as overlays (chosen by uid hash)
    reason_seg_queries: str = "first"  # "all": every query, reported as <split>/all_queries
    # uid -> (question, answer) drawn for RefCOCO-family queries; None: LISA's fixed question.
    prompts: dict[str, Sequence[str]] | None = None
    base_sam_checkpoint: str = ""  # points_only_base_sam: base SAM weights ("": model.sam's)

    def __post_init__(self) -> None:
        self.modes = tuple(dict.fromkeys(MODE_ALIASES.get(m, m) for m in self.modes))
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.reason_seg_queries not in REASON_SEG_QUERIES:
            raise ValueError(f"reason_seg_queries must be one of {REASON_SEG_QUERIES}, got "
                             f"{self.reason_seg_queries!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
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


def _queries(sample: Sample, reason_seg_queries: str = "first") -> list[_Query]:
    """The scored queries of a sample; `flat_index` is the position in its evaluation example."""
    out = []
    for flat, (t, q) in enumerate(evaluation_queries(sample, reason_seg_queries)):
        query = sample.targets[t].queries[q]
        uid = query_uid(sample.key, t, q)
        out.append(_Query(uid, sample, flat, t, query.text, query.is_sentence, query.exists,
                          query.gt_sent, query.query_id or uid))
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
        self.base_sam = None
        if "points_only_base_sam" in options.modes:
            self.base_sam = BaseSamPointsOnly.from_checkpoint(
                model.config.sam, options.base_sam_checkpoint or model.config.sam.checkpoint,
                device=next(model.parameters()).device)

    def _example(self, sample: Sample):
        return evaluation_example(sample, reason_seg_queries=self.options.reason_seg_queries,
                                  prompts=self.options.prompts)

    @torch.no_grad()
    def score(self, samples: Sequence[Sample]) -> list[QueryResult]:
        mode = self.options.reason_seg_queries
        samples = [s for s in samples if evaluation_queries(s, mode)]
        if not samples:
            return []
        queries = [q for s in samples for q in _queries(s, mode)]
        images = {s.key: decode_image(s) for s in samples}
        main = self._run(samples, queries, images, use_seg_embedding=True)
        tuned = None
        if "points_only_tuned" in self.options.modes:
            tuned = [o.mask for o in self._run(samples, queries, images, use_seg_embedding=False)]
        base = None if self.base_sam is None else self._base_sam_masks(queries, images, main)
        results = []
        for k, query in enumerate(queries):
            results.append(self._result(query, images[query.sample.key], main[k],
                                        {"points_only_tuned": None if tuned is None else tuned[k],
                                         "points_only_base_sam": None if base is None else base[k]}))
        return results

    def _base_sam_masks(self, queries, images, main: list[_Outcome]) -> list[Tensor]:
        """Upstream's points-only form: each query's own SasP points and labels, base SAM."""
        masks: list[Tensor | None] = [None] * len(queries)
        by_image: dict[str, list[int]] = {}
        for k, query in enumerate(queries):
            by_image.setdefault(query.sample.key, []).append(k)
        for key, rows in by_image.items():
            prompted = [k for k in rows if main[k].points.numel()]
            if prompted:
                points = torch.stack([main[k].points.float() for k in prompted])
                labels = torch.stack([main[k].labels for k in prompted])
                for k, mask in zip(prompted, self.base_sam.masks(images[key], points, labels),
                                   strict=True):
                    masks[k] = mask
            for k in rows:  # no [SEG] generated: no points, an empty mask (as the main mask)
                if masks[k] is None:
                    masks[k] = torch.zeros_like(main[k].mask)
        return masks

    def _run(self, samples, queries, images, *, use_seg_embedding: bool) -> list[_Outcome]:
        if self.options.protocol == "generate":
            return self._generate(queries, images, use_seg_embedding)
        return self._teacher_forced(samples, images, use_seg_embedding)

    def _teacher_forced(self, samples, images, use_seg_embedding) -> list[_Outcome]:
        model = self.model
        examples = [self._example(s) for s in samples]
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
        expected = sum(len(_queries(s, self.options.reason_seg_queries)) for s in samples)
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
                examples[q.sample.key] = self._example(q.sample)
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
                points_only: dict[str, Tensor | None]) -> QueryResult:
        gt = torch.from_numpy(np.ascontiguousarray(_gt(query)))
        inter, union = intersection_union(main.mask[None], gt[None])
        result = QueryResult(
            uid=query.uid, dataset=query.sample.dataset,
            split=evaluation_split(query.sample, self.options.reason_seg_queries),
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
        for name, mask in points_only.items():
            if mask is not None:
                i, u = intersection_union(mask[None], gt[None])
                setattr(result, f"{name}_intersection", int(i[0]))
                setattr(result, f"{name}_union", int(u[0]))
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
