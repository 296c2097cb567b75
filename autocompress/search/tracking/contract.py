"""The tracker contract: what the driver and the recorder call to log a search, whoever logs it.

`TrialTracker` is the protocol; `NullTracker` is `tracking.uri: none` (every call does nothing) and the base of
`runs.Tracker` (MLflow); `writer_process.TrackerProcess` makes the same calls from a child process.
"""

from __future__ import annotations

from typing import Protocol


class TrialTracker(Protocol):
    """What the driver and the recorder use of a tracker: `Tracker` (MLflow), `NullTracker` (`tracking.uri:
    none`) and `TrackerProcess` (the same calls made by a child process) all provide it."""

    uri: str
    parent_run_id: str | None
    experiment_id: str | None

    def logged_trials(self) -> set[int]: ...

    def log_trial(self, number: int, state: str, params: dict, metrics: dict[str, float], duration_s: float,
                  worker: str, plan_json: str | None, error: str | None = None) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...

    def ui_hint(self) -> str | None: ...


class NullTracker:
    """`tracking.uri: none`: the same interface as `Tracker`; every call does nothing."""

    uri = "none"
    parent_run_id: str | None = None
    experiment_id: str | None = None

    def logged_trials(self) -> set[int]:
        return set()

    def log_trial(self, number: int, state: str, params: dict, metrics: dict[str, float], duration_s: float,
                  worker: str, plan_json: str | None, error: str | None = None) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...

    def ui_hint(self) -> str | None:
        return None
