"""Fixtures for the search tests: a real `mlflow server` on 127.0.0.1, started once per test session."""

from __future__ import annotations

import shutil
import socket

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on a free localhost port (one uvicorn worker, no job runner; SQLite backend
    store); stopped after the session."""
    from tests.search.services import mlflow_server as serve

    tmp = tmp_path_factory.mktemp("mlflow_server")
    with serve(f"sqlite:///{tmp}/mlflow.db", tmp / "artifacts") as url:
        yield url
    shutil.rmtree(tmp, ignore_errors=True)
