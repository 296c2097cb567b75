"""The search's progress bar: trials done / running / failed, best so far per objective, ETA."""

from __future__ import annotations

from typing import Any, Sequence


class SearchProgress:
    """A rich progress bar on stderr, or nothing when `enabled` is False. Use as a context manager.

    `update(done, running, failed, pruned, best)` redraws; `best` maps objective metric -> best feasible value.
    """

    def __init__(self, total: int | None, objectives: Sequence[tuple[str, str]], enabled: bool = True,
                 already_done: int = 0) -> None:
        self.total, self.objectives, self.enabled = total, objectives, enabled
        self.already_done = already_done
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> "SearchProgress":
        if not self.enabled:
            return self
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        from autocompress.terminal import console

        self._progress = Progress(TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                  TextColumn("{task.fields[status]}"), console=console(stderr=True),
                                  transient=False)
        self._progress.__enter__()
        self._task = self._progress.add_task("search", total=self.total, completed=self.already_done,
                                             status="starting workers")
        return self

    def update(self, done: int, running: int, failed: int, pruned: int, best: dict[str, float]) -> None:
        if self._progress is None:
            return
        best_text = "  ".join(f"{d[:3]} {m} {best[m]:.4g}" for d, m in self.objectives if m in best)
        status = f"running {running}  failed {failed}  pruned {pruned}" + (f"  best: {best_text}" if best_text else "")
        self._progress.update(self._task, completed=done, status=status)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
