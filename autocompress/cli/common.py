"""What the command modules share: the model argument's help, the console, a spinner for slow steps."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from autocompress.terminal import console

MODEL_HELP = ("model directory, .gguf file, all-MiniLM-L6-v2, SmolLM2-135M-Instruct, or "
              "random:bert|llama|llama-tied|gpt2")


@contextmanager
def step(message: str) -> Iterator[None]:
    """A spinner on stderr while a slow step runs (silent when stderr is not a terminal)."""
    out = console(stderr=True)
    if out.is_terminal:
        with out.status(message):
            yield
    else:
        yield
