"""What the workflow prints about its steps: a live bar per step on a terminal, one line otherwise.

On a terminal the running step is one line redrawn in place (bar, count, note, elapsed time) and
replaced by its final line when it ends; in a log (stdout is a file or a pipe) only the final
line of each step is written, so a log has exactly one line per step.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any, TextIO

BAR_WIDTH = 24
NAME_WIDTH = 22
REDRAW_EVERY_S = 0.25


class StepConsole:
    """Step lines for a workflow of `total_steps` steps, written to `stream`."""

    def __init__(self, total_steps: int, stream: TextIO | None = None,
                 live: bool | None = None) -> None:
        self.total_steps = total_steps
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self._index = 0
        self._started = 0.0
        self._drawn = 0.0
        self._name = ""

    # ------------------------------------------------------------------ step events
    def skipped(self, name: str, note: str) -> None:
        self._index += 1
        self._final(name, "unchanged", note)

    def running(self, name: str) -> None:
        self._index += 1
        self._name = name
        self._started = time.monotonic()
        if self.live:
            self._draw(self._prefix(name) + "starting")

    def update(self, progress: dict[str, Any]) -> None:
        """Redraw the running step's bar (terminal only, at most every REDRAW_EVERY_S)."""
        now = time.monotonic()
        if not self.live or now - self._drawn < REDRAW_EVERY_S:
            return
        self._drawn = now
        parts = [_bar(progress)] if progress.get("total") else []
        parts += [text for text in (_count(progress), progress.get("note") or "") if text]
        parts.append(_clock(now - self._started))
        self._draw(self._prefix(self._name) + "  ".join(parts))

    def done(self, name: str, note: str) -> None:
        self._final(name, f"done in {time.monotonic() - self._started:.1f} s", note)

    def failed(self, name: str, message: str) -> None:
        """The first line of the error only: the step's MLflow run keeps all of it."""
        self._final(name, f"FAILED after {time.monotonic() - self._started:.1f} s",
                    first_line(message))

    # ------------------------------------------------------------------ drawing
    def _prefix(self, name: str) -> str:
        width = len(str(self.total_steps))
        return f"[{self._index:>{width}}/{self.total_steps}] {name:<{NAME_WIDTH}} "

    def _final(self, name: str, status: str, note: str) -> None:
        line = self._prefix(name) + status + (f" · {note}" if note else "")
        if self.live:
            self._draw(line, end="\n")
        else:
            print(line, file=self.stream, flush=True)

    def _draw(self, text: str, end: str = "") -> None:
        columns = shutil.get_terminal_size((120, 20)).columns
        self.stream.write("\r\033[K" + text[: columns - 1] + end)
        self.stream.flush()


def first_line(text: str, limit: int = 200) -> str:
    """The first line of a (possibly long, multi-line) message, shortened to `limit` chars."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def progress_text(progress: dict[str, Any]) -> str:
    """The last progress of a step as one phrase, e.g. "200/200 steps · loss 0.412"."""
    return " · ".join(text for text in (_count(progress), progress.get("note") or "") if text)


def _count(progress: dict[str, Any]) -> str:
    done, total, unit = progress.get("done") or 0, progress.get("total"), progress.get("unit", "")
    if not done and not total:
        return ""
    count = f"{int(done)}/{int(total)}" if total else f"{int(done)}"
    return f"{count} {unit}".strip()


def _bar(progress: dict[str, Any]) -> str:
    fraction = min(1.0, max(0.0, float(progress.get("done") or 0) / float(progress["total"])))
    filled = round(fraction * BAR_WIDTH)
    return "█" * filled + "░" * (BAR_WIDTH - filled)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes:02d}:{seconds:02d}"
