"""Template lists and upstream's seeded draws of RefCOCO-family evaluation prompts.

Upstream evaluates RefCOCO(+/g), R-RefCOCO and FP-RefCOCO with SESAME's randomly drawn templates
(`READ:dataloaders/test_dataset.py` `TestReferDataset`, `READ:dataloaders/refer_seg_dataset.py`
`create_conversations`): one Python `random` stream, seeded 42 (`READ:utils.py` `random_seed`),
consumed image after image in the order `READ:dataloaders/refer.py` `getImgIds` returns them
(``list(set(image ids))``), sentence after sentence within an image (refs in file order), with
two draws per sentence, ``random.choice`` of a question and then of an answer (short answer,
correction for FP-RefCOCO false premises, denial otherwise), even when the answer is not used
(generation). `draw_refer_prompts` reproduces that stream exactly.

The sentences are this project's own (`read_model.templates`); `load_upstream_templates` reads the
lists from a user's upstream checkout instead, by parsing `dataloaders/qa_template.py` with `ast`
(never importing or executing it), for exact reproduction. Parity: tests/read_model/test_template_draws.py.
"""

from __future__ import annotations

import ast
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from read_model import templates as T
from read_model.config import ConfigError

DEFAULT_PROMPT_SEED = 42  # upstream's random_seed(42)
UPSTREAM_TEMPLATE_FILE = Path("dataloaders") / "qa_template.py"
UPSTREAM_CONSTANTS_FILE = Path("model") / "llava" / "constants.py"
UPSTREAM_LIST_NAMES = {
    "short_questions": "SHORT_QUESTION_TEMPLATE",
    "long_questions": "LONG_QUESTION_TEMPLATE",
    "short_answers": "SHORT_ANSWER_TEMPLATE",
    "long_answers": "LONG_ANSWER_TEMPLATE",
    "neg_answers": "NEG_ANSWER_TEMPLATE",
    "correct_answers": "CORRECT_ANSWER_TEMPLATE",
}
KNOWN_CONSTANTS = {"DEFAULT_IMAGE_TOKEN": "<image>"}  # when the checkout lacks constants.py


class TemplateSourceError(ConfigError):
    """An upstream template file that cannot be read as plain string lists."""


@dataclass(frozen=True)
class TemplateSet:
    """The lists prompts are drawn from, and where they came from (recorded with every run)."""

    short_questions: tuple[str, ...]
    long_questions: tuple[str, ...]
    short_answers: tuple[str, ...]
    long_answers: tuple[str, ...]
    neg_answers: tuple[str, ...]
    correct_answers: tuple[str, ...]
    source: str = "project"


PROJECT_TEMPLATES = TemplateSet(
    short_questions=T.SHORT_QUESTION_TEMPLATES,
    long_questions=T.LONG_QUESTION_TEMPLATES,
    short_answers=T.SHORT_ANSWER_TEMPLATES,
    long_answers=T.LONG_ANSWER_TEMPLATES,
    neg_answers=T.NEG_ANSWER_TEMPLATES,
    correct_answers=T.CORRECT_ANSWER_TEMPLATES,
)


def template_set(source: str) -> TemplateSet:
    """"project" -> the project's lists; anything else is the path of an upstream checkout."""
    if source in ("", "project"):
        return PROJECT_TEMPLATES
    return load_upstream_templates(Path(source))


def load_upstream_templates(checkout: Path) -> TemplateSet:
    """The six template lists of an upstream READ/SESAME checkout, parsed (never executed)."""
    path = checkout / UPSTREAM_TEMPLATE_FILE
    if not path.is_file():
        raise TemplateSourceError(f"{path} not found: not a READ/SESAME checkout")
    data = path.read_bytes()
    names = dict(KNOWN_CONSTANTS)
    constants = checkout / UPSTREAM_CONSTANTS_FILE
    if constants.is_file():
        names.update(_string_assignments(constants.read_bytes(), constants, {}))
    lists = _list_assignments(data, path, names)
    missing = [name for name in UPSTREAM_LIST_NAMES.values() if name not in lists]
    if missing:
        raise TemplateSourceError(f"{path} defines no {missing}")
    digest = hashlib.sha256(data).hexdigest()[:16]
    return TemplateSet(
        **{field: lists[name] for field, name in UPSTREAM_LIST_NAMES.items()},
        source=f"upstream:{path.resolve()}#sha256:{digest}",
    )


def _string_assignments(data: bytes, path: Path, names: dict[str, str]) -> dict[str, str]:
    """Top-level ``NAME = <string expression>`` assignments of a module (others are skipped)."""
    return _assignments(data, path, names)[0]


def _list_assignments(
    data: bytes, path: Path, names: dict[str, str]
) -> dict[str, tuple[str, ...]]:
    """Top-level ``NAME = [<string expression>, ...]`` assignments of a module."""
    return _assignments(data, path, names)[1]


def _assignments(
    data: bytes, path: Path, names: dict[str, str]
) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """String and string-list assignments at module level, in order; nothing is executed."""
    strings = dict(names)
    lists: dict[str, tuple[str, ...]] = {}
    for node in ast.parse(data, filename=str(path)).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target = node.targets[0]
        if not isinstance(target, ast.Name):
            continue
        if isinstance(node.value, ast.List | ast.Tuple):
            lists[target.id] = tuple(_string(item, strings, path) for item in node.value.elts)
            continue
        try:
            strings[target.id] = _string(node.value, strings, path)
        except TemplateSourceError:
            continue  # not a plain string (e.g. IGNORE_INDEX = -100): not needed
    return strings, lists


def _string(node: ast.expr, names: dict[str, str], path: Path) -> str:
    """A string literal, a known string name, or a `+` concatenation of those."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _string(node.left, names, path) + _string(node.right, names, path)
    raise TemplateSourceError(
        f"{path}:{getattr(node, 'lineno', '?')}: {ast.dump(node)[:80]} is not a plain string "
        "(only literals, known names and + are read)"
    )


@dataclass(frozen=True)
class ReferQuery:
    """What a RefCOCO-family evaluation draw needs about one sentence."""

    text: str
    exists: bool = True
    gt_sent: str = ""  # FP-RefCOCO: the corrected expression


@dataclass(frozen=True)
class DrawnPrompt:
    """One sentence's drawn question and answer (the answer is drawn even when unused)."""

    question: str
    answer: str
    question_index: int
    answer_index: int
    answer_family: str  # "short_answers", "correct_answers" or "neg_answers"


def draw_refer_prompts(
    images: Sequence[Sequence[ReferQuery]],
    templates: TemplateSet = PROJECT_TEMPLATES,
    *,
    corrections: bool,
    seed: int = DEFAULT_PROMPT_SEED,
) -> list[list[DrawnPrompt]]:
    """Every sentence's prompt, images given in upstream's order
    (`dataset_builders.refer.upstream_image_order`).

    `corrections` is True for FP-RefCOCO(+/g): their false premises draw a correction answer
    naming ``gt_sent``; other datasets draw a denial.
    """
    rng = random.Random(seed)
    out = []
    for sentences in images:
        drawn = []
        for sentence in sentences:
            name = sentence.text.lower()
            q_index = _choose(rng, templates.short_questions)
            question = templates.short_questions[q_index].format(class_name=name)
            stripped = sentence.text.strip().lower()  # upstream strips after the question
            if sentence.exists:
                family = "short_answers"
            elif corrections:
                family = "correct_answers"
            else:
                family = "neg_answers"
            options = getattr(templates, family)
            a_index = _choose(rng, options)
            answer = options[a_index].format(
                class_name=stripped, gt_name=sentence.gt_sent.strip().lower()
            )
            drawn.append(DrawnPrompt(question, answer, q_index, a_index, family))
        out.append(drawn)
    return out


def _choose(rng: random.Random, options: Sequence[str]) -> int:
    """The index `random.choice(options)` picks, drawing exactly what it draws."""
    if not options:
        raise ValueError("cannot draw from an empty template list")
    return rng.choice(range(len(options)))
