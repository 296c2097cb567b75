"""A TEST HOOK: make chosen trials fail in chosen ways inside the worker that runs them. Never set it for a
real search.

`AUTOCOMPRESS_TEST_FAULTS="2:raise,3:nan,4:oom,5:wait,6:crash@0"` names trial numbers and behaviours:
  raise    the trial raises RuntimeError                 memory   it raises MemoryError
  oom      it raises torch.OutOfMemoryError (as CUDA does when a GPU runs out of memory)
  nan      the evaluator's first metric comes back NaN
  crash    the worker process SIGKILLs itself (as the kernel's OOM killer does)
  interrupt  it raises KeyboardInterrupt (as Ctrl-C does in a driver that runs trials in-process)
  wait     the worker writes its pid to `<dir>/trial-<N>.<attempt>.pid` and blocks until `<dir>/trial-<N>.go`
           exists (a hung trial a test can observe, kill or release); <dir> is AUTOCOMPRESS_TEST_FAULTS_DIR
A suffix `@K` limits a behaviour to attempt K of the trial (attempts count from 0; a trial is attempted
again when its worker dies). The variables are read in the worker process at each trial, so they reach
Ray actors and the local child process through the inherited environment (set them before the search
starts its workers). Unset (the normal case), the hook costs one dictionary lookup per trial.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV, DIR_ENV = "AUTOCOMPRESS_TEST_FAULTS", "AUTOCOMPRESS_TEST_FAULTS_DIR"
BEHAVIOURS = ("raise", "memory", "oom", "nan", "crash", "interrupt", "wait")


def fault_for(number: int | None, attempt: int) -> str | None:
    """The behaviour the hook asks of this trial attempt, or None."""
    spec = os.environ.get(ENV)
    if not spec or number is None:
        return None
    for item in spec.split(","):
        target, _, behaviour = item.strip().partition(":")
        behaviour, _, only = behaviour.partition("@")
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"{ENV}: unknown behaviour {behaviour!r} in {item!r}; use one of {BEHAVIOURS}")
        if target.strip() == str(number) and (not only or int(only) == attempt):
            return behaviour
    return None


def before_trial(number: int | None, attempt: int) -> None:
    """Run the hook's behaviour for this attempt (all but `nan`, which `after_trial` applies)."""
    fault = fault_for(number, attempt)
    if fault == "raise":
        raise RuntimeError(f"injected failure ({ENV})")
    if fault == "memory":
        raise MemoryError(f"injected MemoryError ({ENV})")
    if fault == "oom":
        import torch

        raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 20.00 GiB (injected by {ENV})")
    if fault == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "interrupt":
        raise KeyboardInterrupt
    if fault == "wait":
        folder = Path(os.environ.get(DIR_ENV) or ".")
        tmp = folder / f".trial-{number}.{attempt}.pid"
        tmp.write_text(str(os.getpid()))
        tmp.rename(folder / f"trial-{number}.{attempt}.pid")  # atomic: a reader never sees it half-written
        parent = os.getppid()
        while not (folder / f"trial-{number}.go").exists():
            if os.getppid() != parent:  # orphaned: the process that started this worker is gone
                os._exit(1)
            time.sleep(0.05)


def after_trial(number: int | None, attempt: int, metrics: dict[str, float]) -> dict[str, float]:
    """`metrics` with its first value made NaN when the hook says `nan` for this attempt."""
    if metrics and fault_for(number, attempt) == "nan":
        first = next(iter(metrics))
        return {**metrics, first: float("nan")}
    return metrics
