"""Which RUNNING trials belong to a driver that died, and what happens to them.

A driver marks each trial it starts with user attr `driver` = "host:pid:start-ticks" and, with an RDB
storage (SQLite, PostgreSQL, MySQL), records Optuna heartbeats for its running trials from a background
thread (`RDBStorage.record_heartbeat`; the driver uses ask/tell, so Optuna's own heartbeat thread, which
`study.optimize` starts, does not run). A RUNNING trial is stale, i.e. its driver is dead, when
  - its driver ran on this host and that process is gone (immediate: a re-run right after a crash resumes
    at once), or
  - the storage supports heartbeats and the trial has had none for `3 x heartbeat_s` seconds (Optuna's
    `grace_period`; drivers on other hosts of a shared study).
Nothing else is ever failed: on a shared study (a sweep) the RUNNING trials of live drivers are left alone.
Journal storages (file, Redis) have no heartbeats in Optuna, so there only the same-host rule applies.

A stale trial gets user attr `error` "driver died (...)" and ends FAIL, then Optuna's
`RetryHeartbeatStaleTrialCallback` queues its params again as a WAITING trial (system attrs `failed_trial`,
`retry_history`), at most `max_retries` times. `superseded()` names the failed ones that have such a retry,
so the budget counts each plan once.
"""

from __future__ import annotations

import os
import socket
import threading
import warnings
from typing import Any

DRIVER_ATTR = "driver"
GRACE_FACTOR = 3


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not taken for the same
    process; "" where /proc is not available."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return ""


def driver_id() -> str:
    """This process, as the `driver` user attr of its trials."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def dead_here(driver: str) -> bool:
    """True if `driver` (a `driver_id()`) names a process of this host that no longer runs."""
    parts = driver.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid, ticks = int(parts[1]), parts[2]
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return bool(ticks) and _start_ticks(pid) not in ("", ticks)  # the pid was reused by a new process


class Liveness:
    """The heartbeats of this driver's running trials, and the recovery of other drivers' stale ones.

    Use as a context manager around the trial loop (it runs the heartbeat thread); call `started(trial)`
    right after `study.ask()` and `ended(number)` after `study.tell`."""

    def __init__(self, study: Any, heartbeat_s: int, max_retries: int) -> None:
        import optuna

        self.study, self.storage = study, study._storage
        self.heartbeat_s, self.max_retries = heartbeat_s, max_retries
        base = getattr(self.storage, "_backend", self.storage)
        self.heartbeats = isinstance(base, optuna.storages.RDBStorage)
        if self.heartbeats:  # Optuna reads these on the storage object; the study.py caller need not know
            base.heartbeat_interval, base.grace_period = heartbeat_s, GRACE_FACTOR * heartbeat_s
        self.me = driver_id()
        self._ids: dict[int, int] = {}  # trial number -> trial id, of this driver's running trials
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat_warned = False
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) \
            or optuna.storages.RetryFailedTrialCallback  # the name before Optuna 4.9
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._requeue = retry(max_retry=max_retries)

    def started(self, trial: Any) -> None:
        trial.set_user_attr(DRIVER_ATTR, self.me)
        with self._lock:
            self._ids[trial.number] = trial._trial_id
        self._beat([trial._trial_id])

    def ended(self, number: int) -> None:
        with self._lock:
            self._ids.pop(number, None)

    def __enter__(self) -> "Liveness":
        if self.heartbeats:
            self._thread = threading.Thread(target=self._run, name="autocompress-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                ids = list(self._ids.values())
            self._beat(ids)

    def _beat(self, trial_ids: list[int]) -> None:
        if not self.heartbeats:
            return
        for trial_id in trial_ids:
            try:
                self.storage.record_heartbeat(trial_id)
            except Exception as exc:  # a locked SQLite file, a network blip: the next beat may pass
                if not self._beat_warned:
                    self._beat_warned = True
                    warnings.warn(f"could not record a heartbeat for a running trial ({exc}); if none passes "
                                  f"for {GRACE_FACTOR * self.heartbeat_s} s, another driver of this study may "
                                  "take its trials for a dead driver's", stacklevel=2)

    def recover(self) -> list[Any]:
        """Fail the stale RUNNING trials (see the module docstring) and queue their params again. Returns
        the trials this call failed (FrozenTrials, state FAIL), for the caller to log."""
        import optuna

        TS = optuna.trial.TrialState
        study_id = self.study._study_id
        stale: dict[int, str] = {}
        if self.heartbeats:
            grace = GRACE_FACTOR * self.heartbeat_s
            for trial_id in self.storage._get_stale_trial_ids(study_id):  # Optuna's own staleness query
                stale[trial_id] = f"no heartbeat for more than {grace} s"
        for t in self.study.get_trials(deepcopy=False, states=(TS.RUNNING,)):
            driver = t.user_attrs.get(DRIVER_ATTR, "")
            if t._trial_id not in stale and driver and dead_here(driver):
                stale[t._trial_id] = f"process {driver.split(':')[-2]} on this host is gone"
        failed = []
        for trial_id, why in stale.items():
            if trial_id in self._ids.values():
                continue  # never this driver's own
            trial = self.storage.get_trial(trial_id)
            failed += self._fail(trial, f"driver died ({trial.user_attrs.get(DRIVER_ATTR, 'unknown')}: {why})")
        return failed

    def release(self, why: str) -> list[Any]:
        """This driver stops with trials still running (an exception, Ctrl-C): fail them with `why` and queue
        their params again, as for a dead driver. Returns the failed FrozenTrials."""
        with self._lock:
            ids, self._ids = list(self._ids.values()), {}
        failed: list[Any] = []
        for trial_id in ids:
            failed += self._fail(self.storage.get_trial(trial_id), why)
        return failed

    def _fail(self, trial: Any, why: str) -> list[Any]:
        """Set error `why` and FAIL on a RUNNING trial, then queue its params again (Optuna's retry callback,
        up to max_retries). [] if another process ended it first."""
        import optuna

        history = len(trial.system_attrs.get("retry_history", [])) + 1
        again = "its params are queued again" if history <= self.max_retries \
            else f"not queued again (backend.max_retries={self.max_retries} reached)"
        try:
            self.storage.set_trial_user_attr(trial._trial_id, "error", f"{why}; {again}")
            if not self.storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL):
                return []
        except optuna.exceptions.UpdateFinishedTrialError:
            return []  # another driver got there first, or the trial just ended
        self._requeue(self.study, trial)  # the RUNNING snapshot: its user attrs carry no error
        return [self.storage.get_trial(trial._trial_id)]


def superseded(trials: list[Any]) -> set[int]:
    """Numbers of the trials that failed with a dead driver and were queued again (`retry_history`)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}
