"""Failures the API reports, as one line each (plain Python: the ingress imports no torch)."""

from __future__ import annotations

MAX_REASON_CHARS = 300


class ModelFailure(RuntimeError):
    """The model raised while answering; the API answers 500 and the replica keeps serving."""


def one_line(error: BaseException) -> str:
    """`Type: message` on one line, at most `MAX_REASON_CHARS` characters."""
    text = " ".join(str(error).split()) or "no detail"
    return f"{type(error).__name__}: {text}"[:MAX_REASON_CHARS]
