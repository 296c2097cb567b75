"""What the command modules share: the model argument's help, the arguments several commands take, the console,
a spinner for slow steps."""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from typing import Iterator

from autocompress.terminal import console

MODEL_HELP = ("model directory, .gguf file, all-MiniLM-L6-v2, SmolLM2-135M-Instruct, or "
              "random:bert|llama|llama-tied|gpt2")
TASK_HELP = "auto, embedding, causal-lm or sequence-classification"


def add_task_args(p: argparse.ArgumentParser, trust_remote_code: bool = True, task_help: str = TASK_HELP) -> None:
    """--task (default auto: from the model's config) and, unless told not to, --trust-remote-code."""
    p.add_argument("--task", default="auto", help=task_help)
    if trust_remote_code:
        p.add_argument("--trust-remote-code", action="store_true", help="run the model's own code (off by default)")


def add_output_args(p: argparse.ArgumentParser, json_help: str, progress: bool = True) -> None:
    """--json (a machine-readable result on stdout) and, for commands with a progress bar, --quiet."""
    p.add_argument("--json", action="store_true", help=json_help)
    if progress:
        p.add_argument("--quiet", action="store_true", help="no progress bar")


@contextmanager
def step(message: str) -> Iterator[None]:
    """A spinner on stderr while a slow step runs (silent when stderr is not a terminal)."""
    out = console(stderr=True)
    if out.is_terminal:
        with out.status(message):
            yield
    else:
        yield
