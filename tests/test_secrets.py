"""Passwords in the storage and tracking URLs: masked wherever shown, read from the environment, never written
into a run directory's config.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from autocompress.config import SearchConfig
from autocompress.errors import UserError
from autocompress.secrets import expand_env, mask_url, run_dir_config

BASE = {"model": {"name": "random:bert"}, "space": {"quantize": {"bits": [8]}}}


@pytest.mark.parametrize("url, shown", [
    ("postgresql://user:pw@host/db", "postgresql://user:***@host/db"),
    ("postgresql+psycopg://user:p@ss:w@host:5432/db", "postgresql+psycopg://user:***@host:5432/db"),
    ("postgresql://user:p/ss@host/db", "postgresql://user:***@host/db"),
    ("http://127.0.0.1:5000/a@b", "http://127.0.0.1:5000/a@b"),
    ("postgresql://user:p@ss@host/db", "postgresql://user:***@host/db"),
    ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("https://me:token@mlflow.example:5000", "https://me:***@mlflow.example:5000"),
    ("postgresql://host/db?user=u&password=pw&sslmode=require", "postgresql://host/db?user=u&password=***&sslmode=require"),
    ("postgresql://user@host/db", "postgresql://user@host/db"),
    ("sqlite:////tmp/a:b@c/optuna.db", "sqlite:////tmp/a:b@c/optuna.db"),
    ("none", "none"),
])
def test_mask_url(url, shown):
    assert mask_url(url) == shown


def test_expand_env(monkeypatch):
    monkeypatch.setenv("AC_TEST_PW", "pw")
    assert expand_env("postgresql://u:${AC_TEST_PW}@h/db", "storage") == "postgresql://u:pw@h/db"
    assert expand_env("postgresql://u@h/db", "storage") == "postgresql://u@h/db"
    monkeypatch.delenv("AC_TEST_PW")
    with pytest.raises(UserError, match=r"storage names \$\{AC_TEST_PW\}, which is not set"):
        expand_env("postgresql://u:${AC_TEST_PW}@h/db", "storage")


@pytest.mark.parametrize("key", ["storage", "tracking.uri"])
def test_a_reference_is_expanded_for_use_and_kept_for_the_run_directory(monkeypatch, key):
    monkeypatch.setenv("AC_TEST_PW", "s3cr3t")
    written = "postgresql://u:${AC_TEST_PW}@127.0.0.1/db"
    data = {**BASE, "storage": written} if key == "storage" else {**BASE, "tracking": {"uri": written}}
    config = SearchConfig.from_dict(data).resolved(Path("."))
    used = config.storage if key == "storage" else config.tracking.uri
    assert used == "postgresql://u:s3cr3t@127.0.0.1/db"
    dump, notes = run_dir_config(config)
    kept = dump["storage"] if key == "storage" else dump["tracking"]["uri"]
    assert kept == written and notes == []
    monkeypatch.delenv("AC_TEST_PW")
    with pytest.raises(UserError, match=rf"{key} names \$\{{AC_TEST_PW\}}, which is not set in the environment"):
        SearchConfig.from_dict(data)


@pytest.mark.parametrize("key, env", [("storage", "AUTOCOMPRESS_STORAGE_PASSWORD"),
                                      ("tracking.uri", "AUTOCOMPRESS_TRACKING_PASSWORD")])
def test_a_literal_password_becomes_a_reference_in_the_run_directory(monkeypatch, key, env):
    url = "postgresql://u:s3cr3t@127.0.0.1/db"
    data = {**BASE, "storage": url} if key == "storage" else {**BASE, "tracking": {"uri": url}}
    config = SearchConfig.from_dict(data).resolved(Path("."))
    dump, notes = run_dir_config(config)
    assert "s3cr3t" not in repr(dump)
    kept = dump["storage"] if key == "storage" else dump["tracking"]["uri"]
    assert kept == "postgresql://u:${" + env + "}@127.0.0.1/db"
    assert len(notes) == 1 and env in notes[0] and key in notes[0] and "s3cr3t" not in notes[0]
    monkeypatch.setenv(env, "s3cr3t")  # what a resume from the run directory's config.yaml sets
    again = SearchConfig.from_dict(dump)
    assert (again.storage if key == "storage" else again.tracking.uri) == url
    assert run_dir_config(again)[0] == dump
