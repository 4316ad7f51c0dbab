"""Progress of the running workflow step: reported from any process of the job, read by the driver.

The workflow driver starts one `ProgressBoard` Ray actor under `BOARD_NAME` (in its own job's
namespace, so concurrent workflows on one cluster never share a board) and says which step runs;
code inside a step (the shard build loop, rank 0 of training, the evaluation driver) calls
`report(...)`. Without Ray or without a board (`read-train` on its own, a unit test) `report`
does nothing, so the same code runs unchanged everywhere.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

BOARD_NAME = "read-workflow-progress"


@dataclass
class StepProgress:
    """Where the running step is: `done` of `total` `unit`s, and a short note (e.g. the loss)."""

    step: str = ""
    done: float = 0.0
    total: float | None = None
    unit: str = ""
    note: str = ""


class ProgressBoard:
    """The state behind the driver's progress bar (run as a zero-CPU Ray actor)."""

    def __init__(self) -> None:
        self._progress = StepProgress()

    def start(self, step: str, total: float | None, unit: str) -> None:
        self._progress = StepProgress(step=step, total=total, unit=unit)

    def report(self, done: float | None, total: float | None, unit: str | None,
               note: str | None) -> None:
        for name, value in (("done", done), ("total", total), ("unit", unit), ("note", note)):
            if value is not None:
                setattr(self._progress, name, value)

    def read(self) -> dict[str, Any]:
        return asdict(self._progress)


def start_board() -> Any:
    """The board actor of this driver's job, created on first use (Ray must be initialised)."""
    import ray

    return ray.remote(num_cpus=0)(ProgressBoard).options(name=BOARD_NAME,
                                                         get_if_exists=True).remote()


LOOKUP_TTL_S = 10.0  # a later workflow in the same Ray replaces the board: look it up again
_cache: dict[str, Any] = {"board": None, "at": -LOOKUP_TTL_S}


def report(done: float | None = None, *, total: float | None = None, unit: str | None = None,
           note: str | None = None) -> None:
    """Tell the workflow's progress board where the running step is (a no-op without one)."""
    board = _find_board()
    if board is not None:
        board.report.remote(done, total, unit, note)


def _find_board() -> Any:
    ray = sys.modules.get("ray")  # never import Ray just to report progress
    if ray is None or not ray.is_initialized():
        return None
    now = time.monotonic()
    if now - _cache["at"] >= LOOKUP_TTL_S:
        try:
            _cache["board"] = ray.get_actor(BOARD_NAME)
        except ValueError:
            _cache["board"] = None
        _cache["at"] = now
    return _cache["board"]
