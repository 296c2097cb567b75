"""Terminal output: one place that decides how rich consoles are built."""

from __future__ import annotations

import sys
from typing import Any


def console(stderr: bool = False) -> Any:
    """A rich Console on stdout (or stderr). Piped or redirected output gets 200 columns instead of rich's
    80-column default, so tables of long layer names stay readable in logs and files."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 200)
