"""Scoring, Say score, RLE/JSONL and overlays on planted inputs with hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.evaluation.overlays import evaluation_figure, png_bytes
from pipelines.evaluation.predictions_io import decode_rle, encode_rle, from_jsonl, to_jsonl
from pipelines.evaluation.records import QueryResult
from pipelines.evaluation.say_score import judge_say, normalise_words
from pipelines.evaluation.scoring import (
    flat_metrics,
    giou_ciou,
    label_coverage,
    score_results,
    summary_markdown,
    table_rows,
    to_markdown,
)
from read_model.overlay import NEGATIVE_COLOUR, NEUTRAL_COLOUR, POSITIVE_COLOUR


def _r(uid, dataset="reason_seg", split="val", *, i, u, exists=True, pred=True, sentence=False,
       text="", gt_sent="", **extra):
    return QueryResult(uid=uid, dataset=dataset, split=split, query_id=uid, query_text="q",
                       is_sentence=sentence, gt_exists=exists, gt_sent=gt_sent, text=text,
                       pred_exists=pred, intersection=i, union=u, **extra)


def test_giou_ciou_hand_computed_with_empty_union_rule():
    # IoUs: 30/40, 0/10, empty/empty -> 1.0
    giou, ciou = giou_ciou(np.array([30, 0, 0]), np.array([40, 10, 0]))
    assert giou == pytest.approx((30 / (40 + 1e-5) + 0 + 1.0) / 3, abs=1e-12)
    assert ciou == pytest.approx(30 / 50, abs=1e-9)


def test_planted_reasonseg_and_fp_groups():
    results = [
        _r("a/0/0", i=30, u=40, sentence=False),
        _r("a/0/1", i=10, u=20, sentence=True),
        _r("b/0/0", i=0, u=10, sentence=True),
        # FP-RefCOCO: one true premise, two false premises (all-zero GT: I = 0, U = predicted area)
        _r("c/0/0", "fprefcoco", "val", i=50, u=100, pred=True),
        _r("c/0/1", "fprefcoco", "val", i=0, u=0, exists=False, pred=False, gt_sent="man in red",
           text="There is no dog, but the image does include the man in red."),
        _r("c/0/2", "fprefcoco", "val", i=0, u=25, exists=False, pred=True, gt_sent="blue car",
           text="Sure, [SEG]. The car is here."),
    ]
    table = {(g.dataset, g.split): g.metrics for g in score_results(reversed(results))}
    rs = table[("reason_seg", "val")]
    assert rs["giou"] == pytest.approx((30 / 40 + 10 / 20 + 0) / 3, abs=1e-6)
    assert rs["ciou"] == pytest.approx(40 / 70, abs=1e-9)
    assert rs["short_giou"] == pytest.approx(0.75, abs=1e-6)
    assert rs["long_ciou"] == pytest.approx(10 / 30, abs=1e-9)
    # See and Segment are defined on every group (all its queries), not only on FP datasets.
    assert rs["see"] == 1.0 and rs["num_queries"] == 3
    assert rs["segment_ciou"] == pytest.approx(40 / 70, abs=1e-9)
    assert rs["true_premise_count"] == 3 and rs["false_premise_count"] == 0
    assert rs["say_count"] == 0 and "say" not in rs
    fp = table[("fprefcoco", "val")]
    assert fp["see"] == pytest.approx(2 / 3)  # c/0/2 predicted a mask for a false premise
    assert fp["segment_ciou"] == pytest.approx(50 / 125, abs=1e-9)
    assert fp["giou"] == pytest.approx(0.5, abs=1e-6)  # true premises only
    assert fp["say_count"] == 2
    assert fp["say"] == pytest.approx(0.5)  # "man in red" named; "blue car" not as a phrase
    assert fp["say_recall"] == pytest.approx((1.0 + 0.5) / 2)
    pooled = table[("all", "all")]
    assert pooled["num_queries"] == 6
    # The pooled row is computed over exactly the queries of the rows above it.
    assert pooled["see"] == pytest.approx((3 + 2) / 6)
    assert pooled["segment_ciou"] == pytest.approx((30 + 10 + 50) / (40 + 20 + 10 + 100 + 25),
                                                   abs=1e-9)
    assert pooled["true_premise_count"] == 4 and pooled["false_premise_count"] == 2
    assert pooled["giou"] == pytest.approx((30 / 40 + 10 / 20 + 0 + 50 / 100) / 4, abs=1e-6)
    flat = flat_metrics(score_results(results))
    assert flat["fprefcoco.val.see"] == pytest.approx(2 / 3)
    assert flat["giou"] == pooled["giou"]


def test_order_independence_and_duplicates_rejected():
    rng = np.random.default_rng(0)
    results = [_r(f"s{k:03d}/0/0", i=int(a), u=int(a + b), sentence=bool(k % 2))
               for k, (a, b) in enumerate(rng.integers(0, 1000, size=(50, 2)))]
    shuffled = [results[k] for k in rng.permutation(len(results))]
    assert flat_metrics(score_results(results)) == flat_metrics(score_results(shuffled))
    with pytest.raises(ValueError, match="more than once"):
        score_results([*results, results[3]])


def test_analysis_modes_scored_only_where_present():
    results = [
        _r("a/0/0", i=1, u=2, siou_intersection=5, siou_union=10,
           points_only_tuned_intersection=2, points_only_tuned_union=8,
           points_only_base_sam_intersection=3, points_only_base_sam_union=4),
        _r("b/0/0", i=1, u=2),  # analysis not run for this one
    ]
    m = score_results(results)[0].metrics
    assert m["siou_giou"] == pytest.approx(0.5, abs=1e-6) and m["siou_count"] == 1
    assert m["points_only_tuned_ciou"] == pytest.approx(0.25, abs=1e-9)
    assert m["points_only_base_sam_ciou"] == pytest.approx(0.75, abs=1e-9)
    assert m["points_only_base_sam_count"] == 1


def test_say_normalisation_and_edge_cases():
    assert normalise_words("The <image> Man-in-RED, [SEG]!") == ["man", "in", "red"]
    assert judge_say("anything", " the ") is None
    assert judge_say("a red man", "man in red").exact is False
    assert judge_say("the Man in red.", "man in red").exact is True


def test_rle_roundtrip_and_jsonl_roundtrip():
    mask = np.zeros((7, 9), dtype=np.uint8)
    mask[2:5, 3:8] = 1
    rle = encode_rle(mask)
    assert rle["size"] == [7, 9] and isinstance(rle["counts"], str)
    assert np.array_equal(decode_rle(rle), mask.astype(bool))
    results = [_r("b/0/0", i=1, u=2, payload={"rle": rle, "points": [[1.5, 2.0]], "labels": [1]}),
               _r("a/0/0", i=0, u=0, exists=False, gt_sent="cat")]
    text = to_jsonl(results)
    assert text.splitlines()[0].startswith('{"dataset"') and '"uid":"a/0/0"' in text.splitlines()[0]
    back = {r.uid: r for r in from_jsonl(text)}
    assert back["b/0/0"].payload["points"] == [[1.5, 2.0]]
    assert np.array_equal(decode_rle(back["b/0/0"].payload["rle"]), mask.astype(bool))
    with pytest.raises(ValueError, match="line 2"):
        from_jsonl(text.splitlines()[0] + "\n{not json}\n")


def test_overlay_panels_points_and_heatmap():
    image = np.full((40, 60, 3), 100, dtype=np.uint8)
    mask = np.zeros((40, 60), dtype=bool)
    mask[10:20, 10:20] = True
    points = np.array([[5.0, 5.0], [50.0, 30.0], [30.0, 30.0]])
    labels = np.array([1, -1, 0])
    heat = np.tile(np.linspace(0.0, 1.0, 60, dtype=np.float32), (40, 1))
    out = evaluation_figure(image, mask, points, labels, heat, gt_mask=mask.astype(np.uint8))
    assert out.shape == (40, 180, 3) and out.dtype == np.uint8
    gt_panel, pred_panel, heat_panel = out[:, :60], out[:, 60:120], out[:, 120:]
    assert not np.array_equal(gt_panel[15, 15], image[15, 15])  # GT tinted
    assert np.array_equal(gt_panel[35, 35], image[35, 35])  # outside GT untouched
    assert tuple(pred_panel[5, 5]) == POSITIVE_COLOUR
    assert tuple(pred_panel[30, 50]) == NEUTRAL_COLOUR
    assert tuple(pred_panel[30, 30]) == NEGATIVE_COLOUR
    assert pred_panel[15, 15, 2] > pred_panel[15, 15, 0]  # mask tint inside the mask
    assert heat_panel[20, 10, 2] > heat_panel[20, 10, 0]  # low similarity: blue end of jet
    assert heat_panel[20, 45, 0] > heat_panel[20, 45, 2]  # high similarity: red end of jet
    assert png_bytes(out)[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_rows_markdown():
    rows = table_rows(score_results([_r("a/0/0", i=1, u=2)]))
    md = to_markdown(rows)
    assert md.splitlines()[0].startswith(
        "| dataset | split | num_queries | see | segment_ciou | true_premise_count | giou")
    assert "| reason_seg | val | 1 | 100.00 | 50.00 | 1 | 50.00" in md


def test_summary_table_shows_the_queries_behind_every_number():
    results = [
        _r("a/0/0", i=1, u=2),
        _r("b/0/0", "fprefcoco", "val", i=3, u=4),
        _r("b/0/1", "fprefcoco", "val", i=0, u=5, exists=False, pred=True, gt_sent="cat",
           text="no dog, but a cat"),
    ]
    lines = summary_markdown(score_results(results)).splitlines()
    assert lines[0] == "| data | queries | object present | gIoU | cIoU | See | Segment cIoU | Say |"
    assert lines[2] == "| fprefcoco/val | 2 | 1 | 75.00 | 75.00 | 50.00 | 33.33 | 100.00 |"
    assert lines[3] == "| reason_seg/val | 1 | 1 | 50.00 | 50.00 | 100.00 | 50.00 | n.a. |"
    assert lines[4] == "| all | 3 | 2 | 62.50 | 66.67 | 66.67 | 36.36 | 100.00 |"
    assert "See, Segment cIoU on all queries of the row" in lines[-1]
    assert "all = the 2 rows above together" in lines[-1]
    only_true = summary_markdown(score_results(results[:1]))
    assert "Say" not in only_true.splitlines()[0]  # no false premise anywhere: no Say column


# ------------------------------------------------------------------ the scorer with a real tiny model
@pytest.fixture(scope="module")
def tiny_model():
    from pathlib import Path

    from pipelines.config import load_job_config
    from read_model.model import build_model

    config = load_job_config(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")
    return build_model(config.model)[0]


def _planted_sample(key, height, width, seed, *, false_premise=False):
    import io

    from PIL import Image

    from dataset_builders.sample import Query, Sample, Target

    image = np.random.default_rng(seed).integers(0, 255, (height, width, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    mask = np.zeros((height, width), np.uint8)
    mask[8:30, 12:40] = 1
    mask[:4, :4] = 255  # ignored pixels
    queries = [Query("red square", False), Query("the largest red thing in the picture", True)]
    if false_premise:
        queries.append(Query("blue dog", False, exists=False, gt_sent="red square"))
    return Sample(key, "fprefcoco" if false_premise else "reason_seg", "val", buffer.getvalue(),
                  width, height, [Target(mask, queries, "t0")])


def _counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """Independent numpy re-derivation of upstream's class-1 counts (255 ignored)."""
    valid = gt != 255
    target = (gt == 1) & valid
    pred = pred.astype(bool) & valid
    return int((pred & target).sum()), int((pred | target).sum())


def test_teacher_forced_scorer_counts_siou_and_points_only_tuned(tiny_model):
    from pipelines.evaluation.query_scoring import QueryScorer, ScoringOptions
    from read_model.sasp import similarity_map_full_resolution

    samples = [_planted_sample("a", 48, 64, 0), _planted_sample("b", 41, 57, 1, false_premise=True)]
    scorer = QueryScorer(tiny_model, ScoringOptions(modes=("segmentation", "siou", "points_only_tuned"),
                                                    siou_threshold=0.5, reason_seg_queries="all"))
    results = scorer.score(samples)
    assert [r.uid for r in results] == ["a/0/0", "a/0/1", "b/0/0", "b/0/1", "b/0/2"]
    by_key = {s.key: s for s in samples}
    for r in results:
        sample = by_key[r.uid.split("/")[0]]
        gt = sample.targets[0].mask if r.gt_exists else np.zeros_like(sample.targets[0].mask)
        pred = decode_rle(r.payload["rle"])
        assert pred.shape == gt.shape
        assert (r.intersection, r.union) == _counts(pred, gt)
        assert r.pred_exists == bool(pred.any())
        assert r.siou_union >= 0 and r.points_only_tuned_union >= 0
        assert r.points_only_base_sam_union == -1  # that mode was off
    fp = results[-1]
    assert not fp.gt_exists and fp.intersection == 0  # false premise: all-zero GT

    # SIoU re-derived from the raw similarity grid of the same forward pass.
    from pipelines.examples import evaluation_example
    from read_model.batch import collate_train

    model = tiny_model
    batch = collate_train([evaluation_example(samples[0], reason_seg_queries="all")],
                          model.tokenizer, model.config,
                          model.num_image_tokens)
    seg = model.score_teacher_forced(batch).segments
    heat = similarity_map_full_resolution(seg.similarity_map[:1].reshape(1, -1), [(48, 64)],
                                          model.config.sasp,
                                          clip_image_size=model.config.llava.vision_image_size
                                          )[0].numpy()
    assert (results[0].siou_intersection, results[0].siou_union) == _counts(heat >= 0.5,
                                                                          samples[0].targets[0].mask)
    only = model.score_teacher_forced(batch, use_seg_embedding=False).masks[0][0].numpy()
    assert (results[0].points_only_tuned_intersection,
            results[0].points_only_tuned_union) == _counts(
        only, samples[0].targets[0].mask)

    # Batch composition does not change any count (what makes N actors equal one actor).
    alone = [r for s in samples for r in scorer.score([s])]
    assert [(r.intersection, r.union, r.siou_union) for r in alone] == [
        (r.intersection, r.union, r.siou_union) for r in results]


def test_generate_protocol_scores_missing_seg_as_empty_mask(tiny_model):
    from pipelines.evaluation.query_scoring import QueryScorer, ScoringOptions

    sample = _planted_sample("g", 40, 52, 3, false_premise=True)
    results = QueryScorer(tiny_model, ScoringOptions(protocol="generate", max_new_tokens=6)).score([sample])
    assert len(results) == 3
    for r in results:
        pred = decode_rle(r.payload["rle"])
        gt = sample.targets[0].mask if r.gt_exists else np.zeros_like(sample.targets[0].mask)
        assert (r.intersection, r.union) == _counts(pred, gt)
        if "[SEG]" not in r.text:
            assert not pred.any() and not r.pred_exists


def test_scoring_options_reject_unknown_modes():
    from pipelines.evaluation.query_scoring import ScoringOptions

    with pytest.raises(ValueError, match="unknown evaluation mode"):
        ScoringOptions(modes=("segmentation", "sIoU"))
    with pytest.raises(ValueError, match="protocol"):
        ScoringOptions(protocol="beam")


def test_partial_groups_carry_scored_and_expected_counts():
    """4 of 12 reason_seg queries scored, none of fprefcoco's 5: each row says so, in MLflow's
    flat metrics and in both printed tables, and the pooled coverage is 4/17."""
    table = score_results([_r(f"a/{k}/0", i=1, u=2) for k in range(4)])
    coverage = label_coverage(table, {("reason_seg", "val"): 12, ("fprefcoco", "val"): 5})
    assert coverage == pytest.approx(4 / 17)
    flat = flat_metrics(table)
    assert flat["reason_seg.val.num_queries"] == 4 and flat["reason_seg.val.expected_queries"] == 12
    assert flat["fprefcoco.val.num_queries"] == 0 and flat["fprefcoco.val.expected_queries"] == 5
    assert flat["fprefcoco.val.coverage"] == 0 and "fprefcoco.val.giou" not in flat
    assert flat["expected_queries"] == 17 and flat["coverage"] == pytest.approx(4 / 17)
    summary = summary_markdown(table)
    assert "| reason_seg/val | 4 of 12 (PARTIAL) |" in summary
    assert "| fprefcoco/val | 0 of 5 (PARTIAL) |" in summary
    assert "| all | 4 of 17 (PARTIAL) |" in summary
    markdown = to_markdown(table_rows(table))
    assert "| num_queries | expected_queries | coverage |" in markdown
    assert "| reason_seg | val | 4 | 12 | 33.33 |" in markdown


def test_complete_groups_print_plain_counts():
    table = score_results([_r(f"a/{k}/0", i=1, u=2) for k in range(3)])
    assert label_coverage(table, {("reason_seg", "val"): 3}) == 1.0
    assert "| reason_seg/val | 3 |" in summary_markdown(table)
