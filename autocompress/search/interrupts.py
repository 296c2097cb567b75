"""Ctrl-C during a search: at once while the driver waits on trials, never in the middle of a storage call.

Python raises KeyboardInterrupt wherever the main thread happens to be, and most of a driver's own time is
spent inside SQLAlchemy (Optuna's storage, MLflow's store): an interrupt there can leave a cursor half-read or
a pool lock held, so the clean-up that follows (trials still running marked FAIL, the MLflow parent run marked
KILLED) printed SQLAlchemy's tracebacks and, once in a test suite, did not end within 120 s (not reproduced;
an interrupted storage call is the likely cause). So `run_search` runs under `guard()`:

  - by default a Ctrl-C is *deferred*: it is remembered and raised as KeyboardInterrupt at the next check
    point (`check()`, or entering an `interruptible()` block), which the driver reaches within one loop
    iteration (a few ms of storage work);
  - inside `interruptible()` blocks (the backend starting its workers, waiting for trials, running a trial on
    the local backend, the sensitivity measurement) it is raised at once, as without the guard;
  - a second Ctrl-C while one is deferred, or any Ctrl-C once one was raised (the search is stopping: its
    clean-up writes trials and the MLflow run's status), is raised at once wherever the driver is (a storage or
    MLflow server that hangs must not make the search unstoppable);
  - inside `deferred()` (code that writes to a storage from within an interruptible block: the pruner's reports
    during a local trial) it waits for the end of that block.

Outside `guard()`, or off the main thread (where Python delivers no signals), every function here does nothing.
Nor does `guard()` when SIGINT is ignored (SIG_IGN: the process was started as a background job without job
control, or told to ignore it): it leaves the signal ignored rather than start catching Ctrl-C.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator


class _State:
    active = False  # a guard is installed
    deferring = False  # a Ctrl-C now is remembered rather than raised
    pending = False  # one was remembered and not raised yet
    raised = False  # one was raised: the search is stopping


_state = _State()


def _on_sigint(signum: int, frame: Any) -> None:
    if _state.deferring and not _state.pending and not _state.raised:
        _state.pending = True
        return
    _raise()


def _raise() -> None:
    _state.pending, _state.raised = False, True
    raise KeyboardInterrupt


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Defer Ctrl-C for the block (see the module docstring); the previous SIGINT handler is put back after it.
    A Ctrl-C still deferred when the block ends normally is raised then."""
    if _state.active or not _main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    _state.active, _state.deferring, _state.pending, _state.raised = True, True, False, False
    try:
        yield
    finally:
        pending = _state.pending
        _state.active, _state.deferring, _state.pending, _state.raised = False, False, False, False
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def check() -> None:
    """Raise the deferred Ctrl-C, if there is one."""
    if _state.active and _state.pending and _main_thread():
        _raise()


@contextlib.contextmanager
def _mode(deferring: bool) -> Iterator[None]:
    if not _state.active or not _main_thread():
        yield
        return
    outer = _state.deferring
    _state.deferring = deferring
    try:
        if not deferring:
            check()
        yield
    finally:
        _state.deferring = outer
    if not outer:  # back in an interruptible block: what was deferred inside is raised now
        check()


def interruptible() -> contextlib.AbstractContextManager[None]:
    """A block where Ctrl-C is raised at once (a deferred one is raised on entry)."""
    return _mode(False)


def deferred() -> contextlib.AbstractContextManager[None]:
    """A block that a Ctrl-C does not cut short: it is raised when the block ends (inside an interruptible
    block) or at the next check point."""
    return _mode(True)
