"""Ctrl-C that always lands: a SIGINT is never swallowed, and never leaves a lock held.

CPython runs a Python-level signal handler at the next bytecode boundary of the main thread,
wherever that is. Around every fork (Ray starts its processes through `subprocess`, many of them
during `ray.init`) that can be inside the logging module's at-fork hooks (`logging._acquireLock`
before the fork, `logging._releaseLock` after it). A KeyboardInterrupt raised there is printed as
"Exception ignored in: <function _releaseLock>" and dropped, and the logging module's lock stays
held by the main thread; the next thread that needs that lock (Ray Data's executor thread does)
blocks for ever, so the job neither stops nor finishes (seen in CI: an evaluation interrupted
during Ray's start-up hung until the test's 600 s limit).

`guard_interrupts` installs a handler that, when the signal lands in one of those hooks, sends
the same signal again a moment later (by then the main thread is back in ordinary code) instead
of raising there; and a `sys.unraisablehook` that re-sends any KeyboardInterrupt Python had to
drop anyway (one raised in a `__del__`, a weakref callback, another at-fork hook).
`defer_if_unsafe` lets other SIGINT handlers (the recorders in `pipelines/outcome.py`) follow
the same rule. `enable_stack_dumps` makes `kill -USR2 <pid>` print every thread's stack, for a
job that seems stuck.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

REDELIVERY_DELAY_S = 0.05  # long enough for the main thread to leave the at-fork hook
STACK_DUMP_SIGNAL = signal.SIGUSR2  # SIGUSR1 is Ray Tune's; Ray's dashboard agents use USR2
# The logging module's at-fork hooks across CPython 3.11-3.13: an exception raised in any of
# them is dropped by the interpreter, and raising before the lock call leaves it unbalanced.
LOGGING_FORK_HOOKS = frozenset({"_acquireLock", "_releaseLock", "_prepareFork", "_afterFork",
                                "_after_at_fork_child_reinit_locks"})
FRAMES_CHECKED = 3  # the hook's own frame and the few it may call


def in_fork_hook(frame: FrameType | None) -> bool:
    """Whether the interrupted code is (inside) one of the logging module's at-fork hooks."""
    for _ in range(FRAMES_CHECKED):
        if frame is None:
            return False
        if (frame.f_globals.get("__name__") == "logging"
                and frame.f_code.co_name in LOGGING_FORK_HOOKS):
            return True
        frame = frame.f_back
    return False


def redeliver(signum: int, delay_s: float = REDELIVERY_DELAY_S) -> None:
    """Send `signum` to this process again after `delay_s` (from a daemon timer thread)."""
    timer = threading.Timer(delay_s, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()


def defer_if_unsafe(signum: int, frame: FrameType | None) -> bool:
    """True (and the signal re-sent shortly) when raising at `frame` would lose the signal."""
    if in_fork_hook(frame):
        redeliver(signum)
        return True
    return False


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT handler: KeyboardInterrupt, except inside an at-fork hook (re-sent instead)."""
    if defer_if_unsafe(signum, frame):
        return
    raise KeyboardInterrupt


def _resend_dropped_interrupts(previous: Any, unraisable: Any) -> None:
    previous(unraisable)
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        print("interrupt: Python dropped a KeyboardInterrupt it could not raise here; "
              "sending SIGINT again", file=sys.stderr, flush=True)
        redeliver(signal.SIGINT)


def guard_interrupts() -> None:
    """Make SIGINT reliable in this process (main thread only; idempotent).

    Python's default handler is replaced; a SIGINT that is ignored (SIG_IGN, e.g. under
    `nohup`) or handled by someone else is left as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, raise_interrupt)
    previous = sys.unraisablehook
    if getattr(previous, "resends_interrupts", False):
        return

    def hook(unraisable: Any) -> None:
        _resend_dropped_interrupts(previous, unraisable)

    hook.resends_interrupts = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def enable_stack_dumps() -> None:
    """`kill -USR2 <pid>` prints every thread's Python stack on stderr (the job's log)."""
    if threading.current_thread() is threading.main_thread():
        faulthandler.register(STACK_DUMP_SIGNAL, all_threads=True, chain=False)
