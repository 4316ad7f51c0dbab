"""The two trivial baselines, one set of names for training validation and batch evaluation.

A trained model is only interesting when it beats an empty mask ("empty_mask") and a mask
covering the whole image ("whole_image") on the same queries: training validation logs
``val/baseline_<name>_giou``, evaluation logs ``baseline.<name>.*`` and the workflow prints them
next to the model's table. For false premises they are the two constant answers: the empty mask
says "never present", the whole image "always present" (See = the share of false / true
premises; neither names anything, so Say is 0 wherever it is scored).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dataset_builders.sample import Sample
from pipelines.evaluation.records import QueryResult
from pipelines.examples import evaluation_queries, evaluation_split
from read_model.metrics import intersection_union

BASELINES = ("empty_mask", "whole_image")
PRESENCE = {"empty_mask": "never present", "whole_image": "always present"}


def baseline_mask(kind: str, like: torch.Tensor) -> torch.Tensor:
    """The `kind` baseline's prediction: a bool mask shaped and placed like `like` ([..., H, W])."""
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; valid: {list(BASELINES)}")
    return torch.full(like.shape, kind == "whole_image", dtype=torch.bool, device=like.device)


def baseline_results(samples: Sequence[Sample], kind: str,
                     reason_seg_queries: str = "first") -> list[QueryResult]:
    """Score the queries the evaluation scores (`pipelines.examples.evaluation_queries`) as if
    the model always answered with the `kind` mask."""
    results = []
    for sample in samples:
        pred = baseline_mask(kind, torch.empty((1, sample.height, sample.width)))
        split = evaluation_split(sample, reason_seg_queries)  # type: ignore[arg-type]
        for t, q in evaluation_queries(sample, reason_seg_queries):  # type: ignore[arg-type]
            target = sample.targets[t]
            query = target.queries[q]
            gt = target.mask if query.exists else np.zeros_like(target.mask)
            inter, union = intersection_union(pred, torch.from_numpy(np.ascontiguousarray(gt))[None])
            results.append(QueryResult(
                uid=f"{sample.key}/{t}/{q}", dataset=sample.dataset, split=split,
                query_id=query.query_id, query_text=query.text, is_sentence=query.is_sentence,
                gt_exists=query.exists, gt_sent=query.gt_sent, pred_exists=kind == "whole_image",
                intersection=int(inter[0]), union=int(union[0]),
            ))
    return results
