"""Aggregate per-query results into the paper's metrics (`READ:train_read.py` validate, `READ:test_read.py`; docs/fidelity.md), deterministically.

Rules (upstream's ``intersectionAndUnionGPU`` + meters, via ``read_model.metrics``):
* per-query IoU = I / (U + 1e-5), and 1.0 when U == 0 (empty GT and empty prediction);
* gIoU = mean of per-query IoU; cIoU = ΣI / (ΣU + 1e-10);
* gIoU/cIoU use the true-premise queries (``true_premise_count``); the short/long split is by
  ``is_sentence`` (``short_count`` / ``long_count``);
* See = accuracy of ``pred_exists == gt_exists`` and Segment = cIoU, both over *all* queries of
  the group (``num_queries``), false premises scored against an all-zero GT (the actors already
  counted them that way); Say over the false premises whose GT sentence can be judged
  (``say_count``): see :mod:`pipelines.evaluation.say_score`.

Every group, the pooled ``all`` included, is scored by the same rules over exactly its own
queries, so a pooled number is always computed from the rows listed above it and every metric
comes with the number of queries it was computed on. Results are sorted by ``uid`` before any
sum, so the float results do not depend on how many actors produced them or in which order their
blocks arrived.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from pipelines.evaluation.records import MISSING, QueryResult
from pipelines.evaluation.say_score import judge_say
from read_model.metrics import SeeMeter, SegmentationMeter

OVERALL = "all"
ANALYSES = ("siou", "points_only_tuned", "points_only_base_sam")  # <name>_intersection / _union


def giou_ciou(intersection: np.ndarray, union: np.ndarray) -> tuple[float, float]:
    """gIoU and cIoU of aligned per-query counts, through the model package's meter (one rule)."""
    if len(intersection) == 0:
        return float("nan"), float("nan")
    meter = SegmentationMeter()
    meter.update(np.asarray(intersection).tolist(), np.asarray(union).tolist())
    result = meter.result()
    return float(result["giou"]), float(result["ciou"])


@dataclass
class GroupMetrics:
    """Metrics of one dataset/split (or of everything pooled)."""

    dataset: str
    split: str
    metrics: dict[str, float] = field(default_factory=dict)


def _seg_metrics(prefix: str, inter: np.ndarray, union: np.ndarray, out: dict[str, float],
                 count_key: str | None = None) -> None:
    """gIoU/cIoU under `prefix` (absent when there is nothing to score) and their query count."""
    out[count_key or f"{prefix}count"] = float(inter.size)
    if inter.size:
        giou, ciou = giou_ciou(inter, union)
        out[f"{prefix}giou"] = giou
        out[f"{prefix}ciou"] = ciou


def score_group(results: list[QueryResult]) -> dict[str, float]:
    """All metrics of one group of results (already in a deterministic order)."""
    out: dict[str, float] = {"num_queries": float(len(results))}
    if not results:
        return out
    inter = np.array([r.intersection for r in results], dtype=np.int64)
    union = np.array([r.union for r in results], dtype=np.int64)
    gt_exists = np.array([r.gt_exists for r in results], dtype=bool)
    pred_exists = np.array([r.pred_exists for r in results], dtype=bool)
    sentence = np.array([r.is_sentence for r in results], dtype=bool)

    _seg_metrics("", inter[gt_exists], union[gt_exists], out, "true_premise_count")
    _seg_metrics("short_", inter[gt_exists & ~sentence], union[gt_exists & ~sentence], out)
    _seg_metrics("long_", inter[gt_exists & sentence], union[gt_exists & sentence], out)
    out["false_premise_count"] = float((~gt_exists).sum())

    see = SeeMeter()
    see.update(pred_exists.tolist(), gt_exists.tolist())
    out["see"] = float(see.result()["see_accuracy"])
    out["segment_ciou"] = giou_ciou(inter, union)[1]
    judgements = [judge_say(r.text, r.gt_sent) for r in results if not r.gt_exists]
    scored = [j for j in judgements if j is not None]
    out["say_count"] = float(len(scored))
    if scored:
        out["say"] = float(np.mean([j.exact for j in scored]))
        out["say_recall"] = float(np.mean([j.recall for j in scored]))

    for name in ANALYSES:
        i = np.array([getattr(r, f"{name}_intersection") for r in results], dtype=np.int64)
        u = np.array([getattr(r, f"{name}_union") for r in results], dtype=np.int64)
        keep = gt_exists & (u != MISSING) & (i != MISSING)
        if keep.any():  # an analysis mode that was not run has no columns at all
            _seg_metrics(f"{name}_", i[keep], u[keep], out)
    return out


def score_results(results: Iterable[QueryResult]) -> list[GroupMetrics]:
    """Metrics per (dataset, split), sorted by name, then the pooled group ``all/all``.

    Results carrying an `error` (unreadable samples) are left out here and reported by the caller.
    Duplicate uids are an error: they would mean a query was scored twice (padding bias).
    """
    ordered = sorted((r for r in results if not r.error), key=lambda r: r.uid)
    uids = [r.uid for r in ordered]
    if len(set(uids)) != len(uids):
        dupes = sorted({u for u in uids if uids.count(u) > 1})[:5]
        raise ValueError(f"queries scored more than once: {dupes}")
    groups: dict[tuple[str, str], list[QueryResult]] = {}
    for r in ordered:
        groups.setdefault((r.dataset, r.split), []).append(r)
    table = [GroupMetrics(d, s, score_group(rs)) for (d, s), rs in sorted(groups.items())]
    table.append(GroupMetrics(OVERALL, OVERALL, score_group(ordered)))
    return table


def metric_key(dataset: str, split: str, metric: str) -> str:
    """MLflow-safe flat name; the pooled group's metrics keep their bare names (e.g. ``giou``)."""
    if dataset == OVERALL and split == OVERALL:
        return metric
    safe = f"{dataset}.{split}".replace("+", "plus")
    return f"{safe}.{metric}"


def flat_metrics(table: list[GroupMetrics]) -> dict[str, float]:
    """Every finite metric of a table under its :func:`metric_key`."""
    flat: dict[str, float] = {}
    for group in table:
        for name, value in group.metrics.items():
            if np.isfinite(value):
                flat[metric_key(group.dataset, group.split, name)] = value
    return flat


# Each metric family follows the number of queries it is computed on.
TABLE_COLUMNS = (
    "num_queries", "expected_queries", "coverage", "see", "segment_ciou",
    "true_premise_count", "giou", "ciou",
    "short_count", "short_giou", "short_ciou", "long_count", "long_giou", "long_ciou",
    "false_premise_count", "say_count", "say", "say_recall",
    "siou_count", "siou_giou", "siou_ciou",
    "points_only_tuned_count", "points_only_tuned_giou", "points_only_tuned_ciou",
    "points_only_base_sam_count", "points_only_base_sam_giou", "points_only_base_sam_ciou",
)


def label_coverage(table: list[GroupMetrics], expected: dict[tuple[str, str], int]) -> float:
    """Give every group the number of queries its data holds (`expected_queries`) next to the
    number scored (`num_queries`), and their ratio (`coverage`); a dataset/split none of whose
    queries could be scored gets a row too. Returns the pooled coverage."""
    present = {(g.dataset, g.split) for g in table}
    pooled = table.pop()  # the OVERALL group stays last
    for dataset, split in sorted(expected):
        if (dataset, split) not in present:
            table.append(GroupMetrics(dataset, split, {"num_queries": 0.0}))
    table.sort(key=lambda g: (g.dataset, g.split))
    table.append(pooled)
    for group in table:
        if group is pooled:
            count = sum(expected.values())
        else:
            count = expected.get((group.dataset, group.split), 0)
        scored = group.metrics.get("num_queries", 0.0)
        group.metrics["expected_queries"] = float(count)
        group.metrics["coverage"] = scored / count if count else float("nan")
    return pooled.metrics["coverage"]


def table_rows(table: list[GroupMetrics]) -> list[dict[str, object]]:
    """Rows for CSV/JSON/markdown: dataset, split, then the columns that any group has."""
    present = [c for c in TABLE_COLUMNS if any(c in g.metrics for g in table)]
    rows = []
    for g in table:
        row: dict[str, object] = {"dataset": g.dataset, "split": g.split}
        for c in present:
            row[c] = g.metrics.get(c, float("nan"))
        rows.append(row)
    return rows


def to_markdown(rows: list[dict[str, object]]) -> str:
    """A markdown table (percentages for scores, counts as integers)."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for c in columns:
            v = row[c]
            if isinstance(v, float):
                if np.isnan(v):
                    cells.append("n.a.")
                elif is_count(c):
                    cells.append(str(int(v)))
                else:
                    cells.append(f"{100 * v:.2f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def is_count(column: str) -> bool:
    """Columns holding numbers of queries (printed as integers, not percentages)."""
    return column.endswith("count") or column in ("num_queries", "expected_queries")


# The console summary: (header, metric key, key of the query count it is computed on).
SUMMARY_COLUMNS = (
    ("gIoU", "giou", "true_premise_count"),
    ("cIoU", "ciou", "true_premise_count"),
    ("See", "see", "num_queries"),
    ("Segment cIoU", "segment_ciou", "num_queries"),
    ("Say", "say", "say_count"),
)


def summary_markdown(table: list[GroupMetrics]) -> str:
    """The headline table: one row per dataset/split and the pooled row, counts beside scores.

    Columns whose metric no group has (e.g. Say without false premises) are left out; the
    legend under the table says which queries each column is computed on.
    """
    columns = [c for c in SUMMARY_COLUMNS if any(c[1] in g.metrics for g in table)]
    lines = ["| data | queries | object present | " + " | ".join(c[0] for c in columns) + " |",
             "|" + "---|" * (3 + len(columns))]
    for group in table:
        m = group.metrics
        name = OVERALL if group.dataset == OVERALL else f"{group.dataset}/{group.split}"
        cells = [name, _scored_of(m), _integer(m.get("true_premise_count"))]
        cells += [_percent(m.get(key)) for _, key, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    legend = {"true_premise_count": "the queries whose object is present",
              "num_queries": "all queries of the row",
              "say_count": "the queries without the object whose answer can be judged"}
    uses: dict[str, list[str]] = {}
    for header, _, count in columns:
        uses.setdefault(count, []).append(header)
    notes = [f"{', '.join(headers)} on {legend[count]}" for count, headers in uses.items()]
    pooled = [g for g in table if g.dataset != OVERALL]
    if pooled:
        notes.append(f"{OVERALL} = the {len(pooled)} rows above together")
    return "\n".join(lines) + "\n\n" + "; ".join(notes) + "."


def _scored_of(metrics: dict[str, float]) -> str:
    """"12", or "4 of 12 (PARTIAL)" when fewer queries were scored than the data holds."""
    scored, expected = metrics.get("num_queries"), metrics.get("expected_queries")
    if expected is None or scored is None or scored >= expected:
        return _integer(scored)
    return f"{_integer(scored)} of {_integer(expected)} (PARTIAL)"


def _percent(value: float | None) -> str:
    return "n.a." if value is None or not np.isfinite(value) else f"{100 * value:.2f}"


def _integer(value: float | None) -> str:
    return "0" if value is None else str(int(value))
