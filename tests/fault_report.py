"""The fault-injection suite's report: one row per scenario, written to a file and printed.

Tests marked `fault` inject one fault each (a signal, a killed process, a damaged shard, a
tracking server outage) into a real run and record what the user saw: the exit code, the one
line the command printed, the MLflow run's status and what was lost. Loaded by tests/conftest.py
(`pytest_plugins`); the table goes to `.pytest_cache/read-fault-table.md` (or the path in
READ_FAULT_TABLE) and to the end of the pytest output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

TABLE_ENV = "READ_FAULT_TABLE"
HEADER = ("scenario", "exit code", "message", "MLflow status", "what was lost")


@dataclass(frozen=True)
class FaultRow:
    scenario: str
    exit_code: str
    message: str
    mlflow_status: str
    lost: str

    def cells(self) -> tuple[str, ...]:
        return tuple(str(c).replace("|", "/").replace("\n", " ")[:200] for c in (
            self.scenario, self.exit_code, self.message, self.mlflow_status, self.lost))


_ROWS: list[FaultRow] = []


@pytest.fixture
def fault_table():
    """`fault_table(scenario, exit_code, message, mlflow_status, lost)` adds a row."""
    def record(scenario: str, exit_code: object, message: str, mlflow_status: str,
               lost: str) -> None:
        _ROWS.append(FaultRow(scenario, str(exit_code), message, mlflow_status, lost))
    return record


def last_line(text: str, *needles: str) -> str:
    """The last line of a command's output that contains one of `needles` (its one-line end)."""
    lines = [line.strip() for line in text.splitlines()
             if any(needle in line for needle in needles)]
    return lines[-1] if lines else ""


def markdown(rows: list[FaultRow]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _ROWS:
        return
    table = markdown(_ROWS)
    path = Path(os.environ.get(TABLE_ENV) or config.rootpath / ".pytest_cache" /
                "read-fault-table.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table + "\n")
    terminalreporter.section("fault-injection scenarios")
    terminalreporter.write_line(table)
    terminalreporter.write_line(f"(written to {path})")
