"""Upstream's RefCOCO-family prompt draws: image order, draw sequence, and template sources.

The goldens (tests/fixtures/refer_draws/goldens.json) come from upstream's own REFER class and
`create_conversations` run on two planted datasets under ``random.seed(42)``
(make_goldens.py); upstream's lists were replaced by placeholders of their real lengths, so
the goldens are indices. Here the project's reader and `draw_refer_prompts` must match them.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from dataset_builders.refer import COCO_IMAGE_DIR, UPSTREAM_ORDER_KEY, iter_refer
from dataset_builders.sample import Sample
from read_model.template_draws import (
    PROJECT_TEMPLATES,
    ReferQuery,
    TemplateSet,
    TemplateSourceError,
    draw_refer_prompts,
    load_upstream_templates,
    template_set,
)

GOLDENS = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "refer_draws" / "goldens.json").read_text())
FAMILY = {"short_answers": "SHORT_ANSWER_TEMPLATE", "neg_answers": "NEG_ANSWER_TEMPLATE",
          "correct_answers": "CORRECT_ANSWER_TEMPLATE"}


def _placeholders() -> TemplateSet:
    lengths = GOLDENS["list_lengths"]

    def family(name: str) -> tuple[str, ...]:
        return tuple(f"{name}#{i}" for i in range(lengths[name]))

    return TemplateSet(
        short_questions=family("SHORT_QUESTION_TEMPLATE"),
        long_questions=("unused",),
        short_answers=family("SHORT_ANSWER_TEMPLATE"),
        long_answers=("unused",),
        neg_answers=family("NEG_ANSWER_TEMPLATE"),
        correct_answers=family("CORRECT_ANSWER_TEMPLATE"),
        source="placeholders",
    )


def _write_planted(root: Path, dataset: str, golden: dict) -> None:
    planted = golden["planted"]
    folder = root / "refer_seg" / dataset
    folder.mkdir(parents=True)
    with open(folder / f"refs({golden['split_by']}).p", "wb") as handle:
        pickle.dump(planted["refs"], handle, protocol=2)
    instances = {k: planted[k] for k in ("images", "annotations", "categories")}
    (folder / "instances.json").write_text(json.dumps(instances))
    images = root / COCO_IMAGE_DIR
    images.mkdir(parents=True, exist_ok=True)
    pixels = np.full((24, 32, 3), 90, np.uint8)
    for image in planted["images"]:
        cv2.imwrite(str(images / image["file_name"]), pixels)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Sample]]:
    root = tmp_path_factory.mktemp("refer_draws")
    out = {}
    for dataset, golden in GOLDENS["datasets"].items():
        _write_planted(root, dataset, golden)
        out[dataset] = [s for s in iter_refer(root, dataset, "val") if isinstance(s, Sample)]
    return out


@pytest.mark.parametrize("dataset", sorted(GOLDENS["datasets"]))
def test_reader_records_upstreams_image_order(dataset: str, samples) -> None:
    walked = sorted(samples[dataset], key=lambda s: int(s.source[UPSTREAM_ORDER_KEY]))
    assert [int(s.source["image_id"]) for s in walked] == GOLDENS["datasets"][dataset]["image_order"]


@pytest.mark.parametrize("dataset", sorted(GOLDENS["datasets"]))
def test_draws_follow_upstreams_random_stream(dataset: str, samples) -> None:
    walked = sorted(samples[dataset], key=lambda s: int(s.source[UPSTREAM_ORDER_KEY]))
    images = [[ReferQuery(q.text, q.exists, q.gt_sent) for t in s.targets for q in t.queries]
              for s in walked]
    drawn = draw_refer_prompts(images, _placeholders(), corrections=dataset.startswith("fp"),
                               seed=GOLDENS["seed"])
    expected = GOLDENS["datasets"][dataset]["draws"]
    assert [len(d) for d in drawn] == [len(e) for e in expected]
    for got_image, want_image in zip(drawn, expected, strict=True):
        for got, want in zip(got_image, want_image, strict=True):
            assert (got.question_index, FAMILY[got.answer_family], got.answer_index) == (
                want["question"], want["answer_family"], want["answer"])
    # Text handling as upstream: the question keeps the sentence's spaces (lower-cased), the
    # answer's class name and gt name are stripped.
    first = images[0][0]
    fill = TemplateSet(("{class_name}|",), ("-",), ("{class_name}|",), ("-",), ("{class_name}|",),
                       ("{class_name}|{gt_name}",))
    prompt = draw_refer_prompts([[first]], fill, corrections=True)[0][0]
    assert prompt.question == first.text.lower() + "|"
    if first.exists:
        assert prompt.answer == f"{first.text.strip().lower()}|"
    else:
        assert prompt.answer == f"{first.text.strip().lower()}|{first.gt_sent.strip().lower()}"
    assert prompt.question.split("|")[0] == expected[0][0]["question_class_name"]


def test_project_lists_are_the_default() -> None:
    assert template_set("project") is PROJECT_TEMPLATES and PROJECT_TEMPLATES.source == "project"
    drawn = draw_refer_prompts([[ReferQuery("The Cat ", exists=False, gt_sent="dog")]],
                               corrections=True)[0][0]
    assert drawn.answer_family == "correct_answers" and "the cat" in drawn.answer
    assert drawn.answer in {t.format(class_name="the cat", gt_name="dog")
                            for t in PROJECT_TEMPLATES.correct_answers}


FAKE_TEMPLATES = '''
raise RuntimeError("executed!")  # parsing must never run this
import os
from model.llava.constants import DEFAULT_IMAGE_TOKEN
PREFIX = "Please "
SHORT_QUESTION_TEMPLATE = [
    DEFAULT_IMAGE_TOKEN + "\\n" + "Is {class_name} here?",
    DEFAULT_IMAGE_TOKEN
    + "\\n"
    + PREFIX + "find {class_name}.",
]
LONG_QUESTION_TEMPLATE = [DEFAULT_IMAGE_TOKEN + "\\n" + "{sent} Mask it."]
NEG_ANSWER_TEMPLATE = ["No {class_name}."]
LONG_ANSWER_TEMPLATE = ["[SEG]."]
SHORT_ANSWER_TEMPLATE= ["{class_name}: [SEG]."]
CORRECT_ANSWER_TEMPLATE = ("Not {class_name} but {gt_name}.",)
'''


def _checkout(root: Path, templates: str, constants: str | None = None) -> Path:
    (root / "dataloaders").mkdir(parents=True)
    (root / "dataloaders" / "qa_template.py").write_text(templates)
    if constants is not None:
        (root / "model" / "llava").mkdir(parents=True)
        (root / "model" / "llava" / "constants.py").write_text(constants)
    return root


def test_upstream_lists_are_parsed_not_executed(tmp_path: Path) -> None:
    constants = 'import os\nos.system("false")\nDEFAULT_IMAGE_TOKEN = "<img>"\nIGNORE = -100\n'
    checkout = _checkout(tmp_path, FAKE_TEMPLATES, constants)
    loaded = template_set(str(checkout))
    assert loaded.short_questions == ("<img>\nIs {class_name} here?", "<img>\nPlease find {class_name}.")
    assert loaded.long_questions == ("<img>\n{sent} Mask it.",)
    assert loaded.correct_answers == ("Not {class_name} but {gt_name}.",)
    assert loaded.source.startswith("upstream:") and "#sha256:" in loaded.source
    without_constants = load_upstream_templates(_checkout(tmp_path / "b", FAKE_TEMPLATES))
    assert without_constants.short_questions[0].startswith("<image>\n")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('["No {class_name}."]', None),
        ('["No " + str(1)]', "not a plain string"),
        ('[f"No {x}"]', "not a plain string"),
        (None, "defines no"),
    ],
)
def test_bad_upstream_lists_are_refused(tmp_path: Path, change: str | None, message) -> None:
    text = FAKE_TEMPLATES
    if change is None:
        text = text.replace("NEG_ANSWER_TEMPLATE", "OTHER_TEMPLATE")
    else:
        text = text.replace('["No {class_name}."]', change)
    checkout = _checkout(tmp_path, text)
    if message is None:
        assert load_upstream_templates(checkout).neg_answers == ("No {class_name}.",)
    else:
        with pytest.raises(TemplateSourceError, match=message):
            load_upstream_templates(checkout)
    with pytest.raises(TemplateSourceError, match="not a READ/SESAME checkout"):
        load_upstream_templates(tmp_path / "nowhere")


@pytest.mark.skipif(not os.environ.get("READ_UPSTREAM_CHECKOUT"),
                    reason="set READ_UPSTREAM_CHECKOUT to an upstream READ checkout")
def test_a_real_upstream_checkout() -> None:
    loaded = load_upstream_templates(Path(os.environ["READ_UPSTREAM_CHECKOUT"]))
    counts = [len(getattr(loaded, f)) for f in ("short_questions", "long_questions",
              "short_answers", "long_answers", "neg_answers", "correct_answers")]
    assert counts == [100, 49, 81, 35, 100, 99]
    assert all(q.startswith("<image>\n") for q in loaded.short_questions + loaded.long_questions)
