"""Trivial baselines on the same evaluation data: an empty mask and a whole-image mask.

A trained model is only interesting when it beats these, so the workflow prints them next to the
model's table. They go through the same `QueryResult` scoring as the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dataset_builders.sample import Sample
from pipelines.evaluation.records import QueryResult
from read_model.metrics import intersection_union

BASELINES = ("empty_mask", "whole_image")


def baseline_results(samples: Sequence[Sample], kind: str) -> list[QueryResult]:
    """Score every query of `samples` as if the model always answered with the `kind` mask."""
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; valid: {list(BASELINES)}")
    fill = kind == "whole_image"
    results = []
    for sample in samples:
        pred = torch.full((1, sample.height, sample.width), fill, dtype=torch.bool)
        for t, target in enumerate(sample.targets):
            for q, query in enumerate(target.queries):
                gt = target.mask if query.exists else np.zeros_like(target.mask)
                inter, union = intersection_union(pred, torch.from_numpy(np.ascontiguousarray(gt))[None])
                results.append(QueryResult(
                    uid=f"{sample.key}/{t}/{q}", dataset=sample.dataset, split=sample.split,
                    query_id=query.query_id, query_text=query.text, is_sentence=query.is_sentence,
                    gt_exists=query.exists, gt_sent=query.gt_sent, pred_exists=fill,
                    intersection=int(inter[0]), union=int(union[0]),
                ))
    return results
