"""The Say score: does a false-premise correction name the object that is really there?

Upstream never released a Say metric (`READ:test_read.py` leaves it as "Pass"; docs/fidelity.md),
so the project defines one that is simple, deterministic and checkable by hand
(docs/evaluation.md):

* Normalise a text: lower-case, drop ``[SEG]`` and other bracketed/angled special tokens, replace
  every character that is not a letter or digit by a space, drop the articles ``a an the``, and
  split on whitespace.
* ``say_exact`` (the reported Say score) is 1 when the normalised ``gt_sent`` words appear as a
  contiguous run inside the normalised generated words, else 0.
* ``say_recall`` is the fraction of distinct normalised ``gt_sent`` words found anywhere in the
  generated words: a softer figure that credits partial names ("man" for "man in red").

Only false-premise queries with a non-empty ``gt_sent`` are scored; the others have nothing to
name. The upstream training answer ("... the image does include {gt_sent}.") scores 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ARTICLES = frozenset({"a", "an", "the"})
_SPECIAL_TOKEN = re.compile(r"\[[^\]\s]*\]|<[^>\s]*>")
_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalise_words(text: str) -> list[str]:
    """The word sequence both sides of the Say comparison are reduced to."""
    lowered = _SPECIAL_TOKEN.sub(" ", text.lower())
    return [w for w in _NON_WORD.sub(" ", lowered).split() if w not in ARTICLES]


def contains_phrase(words: list[str], phrase: list[str]) -> bool:
    """True when `phrase` occurs as a contiguous run of `words` (an empty phrase never does)."""
    n = len(phrase)
    if n == 0 or n > len(words):
        return False
    return any(words[i : i + n] == phrase for i in range(len(words) - n + 1))


@dataclass(frozen=True)
class SayJudgement:
    """Per-query Say outcome."""

    exact: bool
    recall: float


def judge_say(generated: str, gt_sent: str) -> SayJudgement | None:
    """Score one correction; None when `gt_sent` is empty after normalisation (not scorable)."""
    target = normalise_words(gt_sent)
    if not target:
        return None
    words = normalise_words(generated)
    present = set(words)
    distinct = set(target)
    recall = sum(1 for w in distinct if w in present) / len(distinct)
    return SayJudgement(exact=contains_phrase(words, target), recall=recall)
