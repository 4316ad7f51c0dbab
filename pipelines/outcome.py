"""How an entry point ends: one exit code and one line that tell the truth.

Every `read-*` command goes through `run_command`, so a caller (the workflow, CI, a shell
script, `ray job submit`) can rely on the code alone:

* 0   the work finished and its outputs exist;
* 1   it started and failed (or stopped without finishing, e.g. the Ray node under it died);
* 2   it could not start (bad configuration, failed start-up checks);
* 130 it was interrupted (SIGINT / Ctrl-C), directly or through a library's signal handler.

Anything but 0 prints one line on stderr saying what happened and how to resume. The MLflow run a
job opened is closed with `terminal_status`: KILLED for an interrupt, FAILED otherwise.

A job whose process dies without running any Python (the Ray core worker ends the driver with
`_exit` when its raylet is killed; the OOM killer; SIGKILL) cannot say so itself, so `supervise`
runs the command in a child process and watches it: the child notes every MLflow run it opens
and whether it finished in a small event file (`READ_OUTCOME_FILE`), and when it ends in any other
way the watcher marks those runs FAILED (KILLED for a signal it forwarded), prints the one line
and exits non-zero.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipelines import interrupts

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C'd command
MAX_MESSAGE_CHARS = 600
STATE_ENV = "READ_OUTCOME_FILE"  # set in the supervised child: where it records its events
UNSUPERVISED_ENV = "READ_UNSUPERVISED"  # "1": run in this process (no watcher)
REPO_ROOT = Path(__file__).resolve().parents[1]
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class JobInterrupted(Exception):
    """SIGINT reached the job; raised in place of whatever the interrupted library raised."""


class JobIncomplete(RuntimeError):
    """The work returned (or exited) without finishing: no output may be reported as success."""


def is_interrupt(error: BaseException) -> bool:
    return isinstance(error, KeyboardInterrupt | JobInterrupted)


def terminal_status(error: BaseException) -> str:
    """The MLflow status for a run that ended with `error`."""
    return "KILLED" if is_interrupt(error) else "FAILED"


def first_line(text: str) -> str:
    """The message's first line; when it only introduces what follows ("... worker errors:"),
    the last line too, which names the cause in a forwarded traceback."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    line = lines[0] if lines else ""
    if line.endswith(":") and len(lines) > 1:
        line = f"{line} {lines[-1]}"
    return line if len(line) <= MAX_MESSAGE_CHARS else line[: MAX_MESSAGE_CHARS - 3] + "..."


def run_command(name: str, body: Callable[[], Any], *, resume: str,
                usage_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run `body` (the command's work) and map how it ended to an exit code and one line.

    `body` may return an int (its own exit code) or anything else (success). `resume` says how
    to continue after an interrupt or failure (e.g. "run the same command again: it resumes from
    the last checkpoint"). `usage_errors` are the exceptions that mean "could not start" (2).
    """
    interrupts.guard_interrupts()  # a Ctrl-C during a fork must not be dropped (or hang the job)
    try:
        code = _run(name, body, resume=resume, usage_errors=usage_errors)
    except SystemExit as error:
        note("reported", code=error.code)
        raise
    note("finished" if code == EXIT_OK else "reported", code=code)
    return code


def _run(name: str, body: Callable[[], Any], *, resume: str,
         usage_errors: tuple[type[BaseException], ...]) -> int:
    try:
        result = body()
    except usage_errors as error:
        print(f"error: {first_line(str(error))}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except (KeyboardInterrupt, JobInterrupted) as error:
        detail = first_line(str(error)) if isinstance(error, JobInterrupted) else ""
        print(f"{name}: interrupted (SIGINT){': ' + detail if detail else ''}; nothing was "
              f"reported as finished; {resume}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except SystemExit:  # argparse's --help and usage errors; a job's own sys.exit(0) from
        raise  # a library is turned into JobInterrupted/JobIncomplete where it happens
    except Exception as error:
        print(f"{name}: failed: {type(error).__name__}: {first_line(str(error))}; {resume}",
              file=sys.stderr, flush=True)
        return EXIT_FAILED
    return result if isinstance(result, int) else EXIT_OK


@contextlib.contextmanager
def sigint_watch() -> Iterator[threading.Event]:
    """An event set when SIGINT arrives in this block, whoever handles it.

    Libraries such as Ray Train replace the SIGINT handler while they run and turn Ctrl-C into
    `sys.exit(0)`; `wrap_sigint_handler` lets the caller keep a record underneath theirs.
    """
    seen = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, _recording(seen, previous))
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def wrap_sigint_handler(seen: threading.Event) -> None:
    """Put a recorder in front of whatever SIGINT handler is installed now (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, _recording(seen, signal.getsignal(signal.SIGINT)))


def _recording(seen: threading.Event, handler: Any) -> Callable[[int, Any], None]:
    """A SIGINT handler that sets `seen`, then does what `handler` would (deferred, like every
    handler here, when the signal lands in an at-fork hook: pipelines/interrupts.py)."""

    def record(signum: int, frame: Any) -> None:
        if interrupts.defer_if_unsafe(signum, frame):
            return
        seen.set()
        if callable(handler):
            handler(signum, frame)
        elif handler != signal.SIG_IGN:
            raise KeyboardInterrupt

    return record


# ---------------------------------------------------------------------------- the watcher
def note(event: str, **fields: Any) -> None:
    """Append one event to the supervised child's event file (a no-op when unsupervised).

    Lines are appended with O_APPEND in one write, so Ray workers started by the child (they
    inherit its environment) can note the runs they open too.
    """
    path = os.environ.get(STATE_ENV)
    if not path:
        return
    line = (json.dumps({"event": event, **fields}) + "\n").encode()
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def note_run(tracking_uri: str, run_id: str) -> None:
    """Record an MLflow run this job opened (closed by the watcher if the job dies abruptly)."""
    note("run", tracking_uri=tracking_uri, run_id=run_id)


def read_events(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return events


def supervise(name: str, module: str, argv: list[str], *, resume: str,
              direct: Callable[[], int]) -> int:
    """Run `python -m module argv` as a watched child and return a truthful exit code.

    Inside the child (or with READ_UNSUPERVISED=1) `direct()` runs here instead. SIGINT and
    SIGTERM sent to this process are forwarded to the child, which runs in its own process
    group so a terminal's Ctrl-C reaches it once, through here.
    """
    if os.environ.get(STATE_ENV):
        interrupts.enable_stack_dumps()  # `kill -USR2` shows where a job that seems stuck is
        return direct()
    if os.environ.get(UNSUPERVISED_ENV) == "1":
        return direct()
    with tempfile.TemporaryDirectory(prefix="read-outcome-") as folder:
        events_path = Path(folder) / "events.jsonl"
        python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH"))
                                      if p)
        env = {**os.environ, STATE_ENV: str(events_path), "PYTHONPATH": python_path}
        child = subprocess.Popen([sys.executable, "-m", module, *argv], env=env,
                                 process_group=0, preexec_fn=_child_signal_setup(os.getpid()))
        received: list[int] = []

        def forward(signum: int, frame: Any) -> None:
            received.append(signum)
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in FORWARDED_SIGNALS}
        try:
            code = child.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        events = read_events(events_path)
    return judge(name, code, events, received, resume)


def _child_signal_setup(parent: int) -> Callable[[], None]:
    """In the child: SIGINT back to its default (the watcher forwards it on purpose, even when
    this shell started the watcher with SIGINT ignored), and SIGTERM when the watcher dies (e.g.
    `ray job stop` killing its process group, which the child left), so no job outlives its
    command (the latter on Linux only)."""

    def arrange() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if not sys.platform.startswith("linux"):
            return
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # the watcher died before the call above
            os.kill(os.getpid(), signal.SIGTERM)

    return arrange


def judge(name: str, code: int, events: list[dict[str, Any]], received: list[int],
          resume: str) -> int:
    """The exit code (and, for an abrupt end, the one line) for a child that ended with `code`."""
    kinds = {e["event"] for e in events}
    if code == EXIT_OK and "finished" in kinds:
        return EXIT_OK
    if "reported" in kinds and code in (EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED):
        return code  # (0 only for --help, which does no work)  # the child said what happened and closed its runs
    signum = received[0] if received else None
    status = "KILLED" if signum else "FAILED"
    runs = [(e["tracking_uri"], e["run_id"]) for e in events if e["event"] == "run"]
    marked = close_open_runs(runs, status, f"the job process ended abruptly ({_how(code)})")
    runs_text = f"; MLflow run(s) {', '.join(marked)} marked {status}" if marked else ""
    if signum:
        print(f"{name}: interrupted ({signal.Signals(signum).name}) and the job process ended "
              f"abruptly ({_how(code)}){runs_text}; {resume}", file=sys.stderr, flush=True)
        return 128 + signum
    print(f"{name}: failed: the job process ended abruptly ({_how(code)}) before finishing, "
          f"e.g. the Ray node under it died or it was killed{runs_text}; {resume}",
          file=sys.stderr, flush=True)
    return EXIT_FAILED


def _how(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit {code} without its final report"


def close_open_runs(runs: list[tuple[str, str]], status: str, reason: str) -> list[str]:
    """Mark the runs still RUNNING with `status`; returns the ids it marked."""
    if not runs:
        return []
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        return []
    marked = []
    for tracking_uri, run_id in dict.fromkeys(runs):
        try:
            client = MlflowClient(tracking_uri)
            if client.get_run(run_id).info.status != "RUNNING":
                continue
            client.set_tag(run_id, "read.ended", reason)
            client.set_terminated(run_id, status=status)
            marked.append(run_id)
        except Exception as error:  # the tracking server may be the thing that is down
            print(f"{run_id}: could not mark it {status}: {first_line(str(error))}",
                  file=sys.stderr, flush=True)
    return marked
