"""Upstream's evaluation protocol per dataset: which queries, which prompts, how long to generate."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from dataset_builders.refer import UPSTREAM_ORDER_KEY
from dataset_builders.sample import Query, Sample, Target
from pipelines.build_shards import write_samples
from pipelines.config import EvalConfig
from pipelines.evaluation.prompt_plan import PromptPlanError, build_prompt_plan, draw_prompts
from pipelines.evaluation.query_scoring import QueryScorer, ScoringOptions
from pipelines.examples import (
    evaluation_example,
    evaluation_queries,
    evaluation_split,
)
from pipelines.shard_sets import resolve
from read_model import templates as T
from read_model.template_draws import PROJECT_TEMPLATES, ReferQuery, draw_refer_prompts

REPO = Path(__file__).resolve().parents[2]


def _jpeg(height: int = 30, width: int = 40) -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((height, width, 3), 80, np.uint8))
    assert ok
    return data.tobytes()


def _mask() -> np.ndarray:
    mask = np.zeros((30, 40), np.uint8)
    mask[5:20, 8:30] = 1
    return mask


def _reason_sample() -> Sample:
    queries = [
        Query("What holds the coffee?", True, query_id="r:0"),
        Query("Which thing is round?", True, query_id="r:1"),
        Query("Where is the zebra?", True, exists=False, answer="There is no zebra.",
              query_id="r:fp0"),
    ]
    return Sample("reason_seg_val_r", "reason_seg", "val", _jpeg(), 40, 30,
                  [Target(_mask(), queries, "r")])


def _refer_sample(key: str, order: int, dataset: str = "fprefcoco") -> Sample:
    targets = [
        Target(_mask(), [Query("Red Cup ", False), Query("the blue cup", False, exists=False,
                                                          gt_sent="the red cup")], "1"),
        Target(_mask(), [Query("left chair", False)], "2"),
    ]
    return Sample(key, dataset, "val", _jpeg(), 40, 30, targets,
                  source={"image_id": key, UPSTREAM_ORDER_KEY: str(order)})


def test_reason_seg_scores_the_first_query_unless_all_are_asked_for() -> None:
    sample = _reason_sample()
    assert evaluation_queries(sample) == [(0, 0)]  # upstream's sents[0]
    assert evaluation_queries(sample, "all") == [(0, 0), (0, 1), (0, 2)]
    assert evaluation_split(sample) == "val"
    assert evaluation_split(sample, "all") == "val/all_queries"  # reported under its own name
    example = evaluation_example(sample)
    assert example.conversations == [(T.FIXED_LONG_QUESTION.format(sent="What holds the coffee?"),
                                       T.FIXED_ANSWER)]
    assert len(evaluation_example(sample, reason_seg_queries="all").conversations) == 3
    refer = _refer_sample("fprefcoco_val_1", 0)
    assert evaluation_queries(refer) == [(0, 0), (0, 1), (1, 0)]  # every sentence, both modes


def test_drawn_prompts_replace_lisas_question_for_refer_datasets() -> None:
    samples = [_refer_sample("fprefcoco_val_b", 1), _refer_sample("fprefcoco_val_a", 0)]
    from pipelines.evaluation.prompt_plan import SampleQueries

    metas = [SampleQueries(s.key, s.dataset, s.split, int(s.source[UPSTREAM_ORDER_KEY]),
                           [(t, q, query) for t, target in enumerate(s.targets)
                            for q, query in enumerate(target.queries)]) for s in samples]
    prompts = draw_prompts(metas, PROJECT_TEMPLATES, seed=42)
    # Upstream's order is by upstream_order ("..._a" first), whatever order the shards hold.
    images = [[ReferQuery("Red Cup ", True), ReferQuery("the blue cup", False, "the red cup"),
               ReferQuery("left chair", True)]] * 2
    expected = draw_refer_prompts(images, corrections=True, seed=42)
    assert prompts["fprefcoco_val_a/0/0"] == (expected[0][0].question, expected[0][0].answer)
    assert prompts["fprefcoco_val_b/1/0"] == (expected[1][2].question, expected[1][2].answer)
    assert expected[0][1].answer_family == "correct_answers"

    example = evaluation_example(samples[1], prompts=prompts)
    questions = [q for q, _ in example.conversations]
    assert questions == [prompts[f"fprefcoco_val_a/{u}"][0] for u in ("0/0", "0/1", "1/0")]
    answers = [a for _, a in example.conversations]
    assert answers[0] == prompts["fprefcoco_val_a/0/0"][1] and answers[0].count("[SEG]") == 1
    assert answers[1] == T.FIXED_ANSWER  # a drawn correction has no [SEG] to teacher-force
    assert int(example.masks[1].sum()) == 0  # and scores against an all-zero GT
    with pytest.raises(KeyError, match="no drawn prompt"):
        evaluation_example(samples[0], prompts={})


def test_prompt_plan_reads_shards_and_refuses_unordered_samples(tmp_path: Path) -> None:
    samples = [_refer_sample(f"fprefcoco_val_{i}", order) for i, order in enumerate((2, 0, 1))]
    folder = str(tmp_path / "fprefcoco" / "val")
    write_samples(samples, folder, dataset="fprefcoco", split="val")
    reason_folder = str(tmp_path / "reason_seg" / "val")
    write_samples([_reason_sample()], reason_folder, dataset="reason_seg", split="val")
    plan = build_prompt_plan([resolve(str(tmp_path), "fprefcoco/val"),
                              resolve(str(tmp_path), "reason_seg/val")], "project", 42)
    assert len(plan.prompts) == 9  # three sentences per image, ReasonSeg not drawn
    assert plan.params() == {"eval.templates": "project", "eval.prompt_seed": "42",
                             "eval.drawn_prompts": "9"}
    first = draw_refer_prompts([[ReferQuery("Red Cup ", True)]], corrections=True)[0][0]
    assert plan.prompts["fprefcoco_val_1/0/0"] == (first.question, first.answer)  # order 0

    unordered = [Sample("refcoco_val_x", "refcoco", "val", _jpeg(), 40, 30,
                        [Target(_mask(), [Query("cup", False)], "1")])]
    other = str(tmp_path / "refcoco" / "val")
    write_samples(unordered, other, dataset="refcoco", split="val")
    with pytest.raises(PromptPlanError, match="rebuild the shards"):
        build_prompt_plan([resolve(str(tmp_path), "refcoco/val")], "project", 42)


def test_generation_defaults_follow_upstream() -> None:
    settings = EvalConfig()
    assert settings.max_new_tokens == ScoringOptions().max_new_tokens == 512
    assert (settings.reason_seg_queries, settings.refer_prompts, settings.templates,
            settings.prompt_seed) == ("first", "drawn", "project", 42)
    with pytest.raises(ValueError, match="reason_seg_queries"):
        ScoringOptions(reason_seg_queries="some")


@pytest.fixture(scope="module")
def tiny_model():
    from pipelines.config import load_job_config
    from read_model.model import build_model

    return build_model(load_job_config(REPO / "configs" / "tiny.yaml").model)[0].eval()


def test_generation_stops_once_every_row_wrote_eos(tiny_model, monkeypatch) -> None:
    """512 allowed tokens cost nothing when answers end early: decoding stops at the last EOS."""
    model = tiny_model
    eos, pad = model.token_ids.eos, model.token_ids.pad
    steps = {"n": 0}
    real = model.lm_logits

    def scripted(hidden):  # row 0 ends at step 1, row 1 at step 3
        logits = real(hidden).clone()
        step = steps["n"]
        steps["n"] += 1
        for row, end in enumerate((1, 3)):
            if step >= end:
                logits[row, eos] = logits[row].max() + 10
            else:
                logits[row, eos] = logits[row].min() - 10
        return logits

    monkeypatch.setattr(model, "lm_logits", scripted)
    calls = {"n": 0}
    forward = model.language_forward

    def counted(*args, **kwargs):
        calls["n"] += 1
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "language_forward", counted)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (30, 40, 3), dtype=np.uint8) for _ in range(2)]
    from read_model.batch import collate_prompts

    batch = collate_prompts(images, ["Where?", "Which one?"], model.tokenizer, model.config,
                            model.num_image_tokens)
    features, _ = model.encode_images(batch.images, batch.original_sizes)
    generated, mask = model.generate_greedy(batch.input_ids, batch.attention_mask,
                                            features[batch.row_image], max_new_tokens=512)
    assert generated.shape == (2, 4) and calls["n"] == 4  # prompt pass + 3 decoding steps
    assert generated[0, 1].item() == eos and generated[0, 2:].tolist() == [pad, pad]
    assert generated[1, 3].item() == eos
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_scorer_uses_the_drawn_question_when_generating(tiny_model, monkeypatch) -> None:
    sample = _refer_sample("fprefcoco_val_g", 0)
    prompts = {f"fprefcoco_val_g/{u}": (f"<image>\nDrawn question {u}?", "x [SEG].")
               for u in ("0/0", "0/1", "1/0")}
    seen: list[str] = []
    real = tiny_model.predict

    def spy(images, questions, **kwargs):
        seen.extend(questions)
        assert kwargs["max_new_tokens"] == 3
        return real(images, questions, **kwargs)

    monkeypatch.setattr(tiny_model, "predict", spy)
    scorer = QueryScorer(tiny_model, ScoringOptions(protocol="generate", max_new_tokens=3,
                                                    prompts=prompts))
    results = scorer.score([sample])
    assert seen == [prompts[r.uid][0] for r in results]
    assert [r.uid for r in results] == ["fprefcoco_val_g/0/0", "fprefcoco_val_g/0/1",
                                        "fprefcoco_val_g/1/0"]
