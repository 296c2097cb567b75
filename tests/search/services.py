"""The real PostgreSQL and Redis servers the storage and sweep tests use, and their clean-up.

`AUTOCOMPRESS_TEST_POSTGRES` (default postgresql://postgres@127.0.0.1:5432/test) and `AUTOCOMPRESS_TEST_REDIS`
(default redis://127.0.0.1:6379/15) name them; a test that needs one SKIPS, naming the variable, when it cannot
be reached. Every test uses its own study name (`unique_name`) and deletes its studies (`delete_studies`).
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

POSTGRES_VAR, REDIS_VAR = "AUTOCOMPRESS_TEST_POSTGRES", "AUTOCOMPRESS_TEST_REDIS"


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test PostgreSQL URL, after checking that the server answers (else the test skips)."""
    url = os.environ.get(POSTGRES_VAR, "postgresql://postgres@127.0.0.1:5432/test")
    try:
        import psycopg
    except ImportError:
        pytest.skip(f"psycopg is not installed (pip install 'psycopg[binary]'); needed for {POSTGRES_VAR}")
    try:
        psycopg.connect(libpq_url(url), connect_timeout=3).close()
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL at {url} cannot be reached ({str(exc).strip().splitlines()[0]}); "
                    f"set {POSTGRES_VAR} to a reachable server")
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis URL, after checking that the server answers (else the test skips)."""
    url = os.environ.get(REDIS_VAR, "redis://127.0.0.1:6379/15")
    try:
        import redis
    except ImportError:
        pytest.skip(f"redis is not installed (pip install redis); needed for {REDIS_VAR}")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis at {url} cannot be reached ({exc}); set {REDIS_VAR} to a reachable server")
    return url


def delete_studies(url: str, *names: str) -> None:
    """Delete the named studies (and any left-over enqueue lock) from the storage at `url`, if present."""
    import optuna

    from autocompress.search.storage import open_storage
    from autocompress.search.study import LOCK_SUFFIX

    storage = open_storage(url)
    for name in names:
        for study in (name, name + LOCK_SUFFIX):
            try:
                optuna.delete_study(study_name=study, storage=storage)
            except KeyError:
                pass


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (postgresql+driver://) as libpq takes it (postgresql://)."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgresql") else url


# What the multi-process tests run in each child (spawned: kept in this light module, not a test module).

def child_config(url: str, study: str) -> object:
    from autocompress.config import SearchConfig

    return SearchConfig.from_dict({"model": {"name": "random:bert"}, "space": {"quantize": {"bits": [4, 8]}},
                                   "storage": url, "study_name": study, "run_dir": "unused"})


def join_in_child(url: str, study: str, barrier, results) -> None:
    """One process of a sweep: open the study, wait for the others, join with three baselines."""
    import optuna

    from autocompress.search.storage import open_storage
    from autocompress.search.study import join_study

    study_obj = optuna.load_study(study_name=study, storage=open_storage(url))
    baselines = [(f"b{i}", {"x": i}) for i in range(3)]
    barrier.wait()
    results.put(join_study(study_obj, child_config(url, study), baselines))


def open_in_child(url: str, barrier, results) -> None:
    """Wait for the others, then open the storage at `url`; put "ok" or the error on `results`."""
    from autocompress.search.storage import open_storage

    barrier.wait()
    try:
        open_storage(url)
        results.put("ok")
    except Exception as exc:  # reported to the test
        results.put(f"{type(exc).__name__}: {exc}")


@contextmanager
def mlflow_server(backend_store_uri: str, artifacts: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 (a free port, one worker) over `backend_store_uri`, proxying
    artifacts to the directory `artifacts`; yields its URL and stops it (and its workers) after."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.search.conftest import free_port

    port = free_port()
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]
    cmd += ["server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", backend_store_uri, "--artifacts-destination", str(artifacts)]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    log_path = artifacts.parent / f"mlflow-server-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.25)
            yield url
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the server and the uvicorn worker it started
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


@contextmanager
def fresh_postgres_database(postgres_url: str, prefix: str) -> Iterator[str]:
    """A new, empty database on the test server; yields its SQLAlchemy URL and drops it after."""
    import psycopg

    admin, name = libpq_url(postgres_url), f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield postgres_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
