"""Fixtures of the space tests: the inventories of the tiny random models."""

from __future__ import annotations

import optuna
import pytest

from autocompress.loading import load_model

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def infos():
    return {arch: load_model(f"random:{arch}").info for arch in ("bert", "llama", "gpt2")}
