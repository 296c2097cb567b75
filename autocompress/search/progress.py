"""The search's progress bars: trials done / running / failed, best so far per objective, ETA; and the
per-unit sensitivity measurement's plans done, which a fresh seeded study runs before its first trial."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence


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


@contextlib.contextmanager
def sensitivity_progress(enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A bar on stderr for the sensitivity measurement ("sensitivity ━━━ 12/75 plans 0:00:31"); yields the
    `progress(done, total)` callback that `search.seeding.sensitivity.load_or_measure` takes. Draws nothing when not
    `enabled` or when stderr is not a terminal (the callback still works)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from autocompress.terminal import console

    err = console(stderr=True)
    with Progress(TextColumn("[bold]sensitivity"), BarColumn(), MofNCompleteColumn(), TextColumn("plans"),
                  TimeElapsedColumn(), console=err, disable=not enabled or not err.is_terminal) as bar:
        task = bar.add_task("sensitivity", total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)
