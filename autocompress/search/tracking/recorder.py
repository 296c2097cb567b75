"""Logging finished trials to MLflow so that MLflow being slow or down never stops a search, nor holds it.

The Optuna storage is the record of a search; MLflow is a view of it. `TrialRecorder` guarantees:
  - the driver loop never waits on MLflow: `record` hands the trial to a writer thread (started on the
    first `record`) and returns; the writer logs the kept trials oldest first, one MLflow request at a time
    (a nested run costs about 50 ms on a local SQLite store, more over HTTP; `background=False` logs in
    the calling thread instead);
  - every MLflow request made during the search times out after `tracking.timeout_s` and is not retried at
    once (MLFLOW_HTTP_REQUEST_TIMEOUT / MLFLOW_HTTP_REQUEST_MAX_RETRIES=0);
  - a trial that cannot be logged is kept in memory and tried again, oldest first, `retry_s` (at least
    `MIN_RETRY_S`) after the failure, and once more at the end of the search;
  - the user is warned once when logging first fails, and at the end if trials are still only in the
    Optuna storage (`untracked`, also in `SearchResult.untracked`);
  - `finish` and `close` wait for the writer, so what was recorded is logged (or reported as untracked)
    before the parent run ends;
  - `reconcile` logs the finished trials of the study that have no MLflow run yet (those of a driver that
    died, or that ended while MLflow was down for good), so re-running the same command completes MLflow.
Logging a trial twice is safe: `Tracker.log_trial` keeps one run per trial number.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from autocompress.secrets import mask_url

if TYPE_CHECKING:
    from autocompress.search.tracking.contract import TrialTracker

MIN_RETRY_S = 1.0  # the writer's shortest pause between failed attempts (retry_s 0 would spin on a dead server)


@dataclass
class TrialRecord:
    """What MLflow shows of one finished trial (see `Tracker.log_trial`)."""

    number: int
    state: str  # COMPLETE, PRUNED or FAIL
    params: dict[str, Any]
    metrics: dict[str, float]
    duration_s: float
    worker: str
    plan_json: str | None
    message: str | None = None  # the error (FAIL) or reason (PRUNED, cached)
    extra: dict[str, float] = field(default_factory=dict)  # more metrics (apply_s, eval_s)


class TrialRecorder:
    """The driver's only way to MLflow during a search (`tracker` is a `Tracker` or a `NullTracker`)."""

    def __init__(self, tracker: TrialTracker, storage_url: str, timeout_s: float = 10.0, retry_s: float = 30.0,
                 background: bool = True) -> None:
        self.tracker, self.storage_url = tracker, storage_url
        self.timeout_s, self.retry_s, self.background = timeout_s, retry_s, background
        self.pending: dict[int, TrialRecord] = {}
        self.failed_at: float | None = None  # monotonic time of the last failure while anything is pending
        self.warned = self.finished = False
        self._mu = threading.Lock()  # guards `pending`
        self._io = threading.RLock()  # one MLflow request at a time, from the writer or the caller
        self._wake, self._stopping, self._writer = threading.Event(), False, None

    @property
    def untracked(self) -> list[int]:
        """Numbers of the finished trials not (yet) in MLflow."""
        with self._mu:
            return sorted(self.pending)

    def record(self, rec: TrialRecord) -> None:
        """Keep `rec` and have it logged: by the writer thread (returns at once), or now when not `background`
        (kept for later if MLflow is failing). Never raises."""
        if self.tracker.uri == "none":
            return
        with self._mu:
            self.pending[rec.number] = rec
        if not self.background:
            self.flush()
            return
        if self._writer is None:
            self._stopping = False
            self._writer = threading.Thread(target=self._write, name="autocompress-mlflow", daemon=True)
            self._writer.start()
        self._wake.set()

    def flush(self, force: bool = False) -> bool:
        """Log the kept trials, oldest first; stop at the first failure. Unless `force`, do nothing within
        `retry_s` of the last failure. True when nothing is left."""
        with self._io:
            if self.failed_at is not None and not force and time.monotonic() - self.failed_at < self.retry_s:
                return False
            while True:
                with self._mu:
                    if not self.pending:
                        break
                    number = min(self.pending)
                    rec = self.pending[number]
                metrics = {k: v for k, v in {**rec.metrics, **rec.extra}.items()
                           if v is not None and math.isfinite(v)}
                if not self._try(self.tracker.log_trial, rec.number, rec.state, rec.params, metrics, rec.duration_s,
                                 rec.worker, rec.plan_json, rec.message):
                    return False
                with self._mu:
                    if self.pending.get(number) is rec:  # not replaced by a newer record meanwhile
                        del self.pending[number]
            self.failed_at = None
            return True

    def wait(self) -> None:
        """Stop the writer thread after its current attempt; what it could not log stays in `pending`."""
        writer, self._writer = self._writer, None
        if writer is not None:
            self._stopping = True
            self._wake.set()
            writer.join()

    def close(self, status: str) -> bool:
        """End the search's MLflow side: wait for the writer, one more (unforced) try at what is kept, then the
        parent run's terminal status (FINISHED, FAILED, KILLED) through `call`; a writer process
        (tracking/writer_process.py) ends with it, whether or not MLflow answered."""
        self.wait()
        if self.pending:
            self.flush()
        try:
            return self.call("close", status)
        finally:
            if hasattr(self.tracker, "stop"):
                self.tracker.stop()

    def _write(self) -> None:
        """The writer thread: log what is kept whenever woken; after a failure, try again every retry_s."""
        while not self._stopping:
            self._wake.wait(self._retry_in())
            self._wake.clear()
            if not self._stopping and not self._retry_in():  # no failure, or its pause is over
                self.flush(force=True)

    def _retry_in(self) -> float | None:
        """Seconds the writer still waits after a failure before trying again; None when nothing failed."""
        if self.failed_at is None or not self.pending:
            return None
        return max(self.failed_at + max(self.retry_s, MIN_RETRY_S) - time.monotonic(), 0.0)

    def call(self, method: str, *args: Any, **kwargs: Any) -> bool:
        """Call a parent-run method of the tracker (log_text, log_metrics, close) the same guarded way;
        skipped (False) once `finish` found MLflow still down, so a hung server costs no more timeouts."""
        if self.pending and self.finished:
            return False
        with self._io:
            return self._try(getattr(self.tracker, method), *args, **kwargs)

    def reconcile(self, trials: Iterable[Any], record_of: Callable[[Any], TrialRecord]) -> int:
        """Log the finished trials (FrozenTrials) that MLflow does not have; returns how many were missing."""
        if self.tracker.uri == "none":
            return 0
        logged = self.tracker.logged_trials()
        missing = [t for t in trials if t.state.is_finished() and t.number not in logged]
        for t in missing:
            with self._mu:
                self.pending[t.number] = record_of(t)
        if missing and self.tracker.uri != "none":
            self.flush(force=True)
        return len(missing)

    def finish(self) -> list[int]:
        """The last attempt to log what is kept (after the writer stops); warns and returns the numbers still
        only in Optuna."""
        self.wait()
        self.finished = True
        if self.pending:
            self.flush(force=True)
        if self.pending:
            warnings.warn(
                f"MLflow is still unreachable: {len(self.pending)} finished trial(s) ({_numbers(self.pending)}) "
                f"are only in the Optuna storage {mask_url(self.storage_url)}; run the same command again once MLflow "
                "answers and they are logged", stacklevel=2)
        return self.untracked

    def _try(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        from autocompress.search.tracking.runs import _env

        try:
            with _env(MLFLOW_HTTP_REQUEST_TIMEOUT=str(max(1, math.ceil(self.timeout_s))),
                      MLFLOW_HTTP_REQUEST_MAX_RETRIES="0"):
                fn(*args, **kwargs)
            return True
        except Exception as exc:  # requests, urllib3, MlflowException, sqlite: all mean "not now"
            self.failed_at = time.monotonic()
            if not self.warned:
                self.warned = True
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                warnings.warn(f"MLflow logging failed ({type(exc).__name__}: {first}); the search goes on, every "
                              "trial is in the Optuna storage, and the trials are logged to MLflow when it answers "
                              f"again (tried every {max(self.retry_s, MIN_RETRY_S):g} s, and at the end)",
                              stacklevel=3)
            return False


def _numbers(numbers: Iterable[int]) -> str:
    items = sorted(numbers)
    text = ", ".join(str(n) for n in items[:10])
    return text + (f", ... {len(items) - 10} more" if len(items) > 10 else "")
