"""Optuna storage by URL: SQLite, PostgreSQL, a journal file and Redis (real servers, see services.py), the
one-line errors for URLs that cannot be opened, and the study lock that the processes of a sweep share."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import uuid

import optuna
import pytest

from autocompress.cli import main
from autocompress.errors import UserError
from autocompress.search.driver import run_search
from autocompress.search.rundir.reader import RunDir
from autocompress.search.storage import display_url, journal_path, open_storage, storage_kind
from autocompress.search.study import LOCK_SUFFIX, join_study, study_lock
from tests.search.conftest import free_port
from tests.search.services import (child_config, delete_studies, fresh_postgres_database,  # noqa: F401
                                   join_in_child, open_in_child, postgres_url, redis_url, unique_name)
from tests.support import make_config

KINDS = ("sqlite", "postgresql", "journal", "redis")


@pytest.fixture(params=KINDS)
def storage_url(request, tmp_path):
    """A storage URL of each kind; the servers' ones skip when the server cannot be reached."""
    kind = request.param
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/store/optuna.db"
    if kind == "journal":
        return f"journal://{tmp_path}/store/optuna.log"
    return request.getfixturevalue("postgres_url" if kind == "postgresql" else "redis_url")


def test_url_forms():
    assert storage_kind("sqlite:///x.db") == "sqlite" and storage_kind("mysql+pymysql://u@h/d") == "rdb"
    assert storage_kind("postgresql://postgres@127.0.0.1/test") == "rdb"
    assert storage_kind("journal:///runs/a.log") == storage_kind("runs/a.log") == "journal"
    assert storage_kind("redis://h:6379/0") == storage_kind("rediss://h/0") == "redis"
    assert journal_path("journal:///abs/a.log") == "/abs/a.log"
    assert journal_path("rel/a.log").endswith("/rel/a.log") and journal_path("rel/a.log").startswith("/")
    assert display_url("postgresql://me:s3cret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert display_url("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert display_url("postgresql://me@db/x") == "postgresql://me@db/x"


def test_a_bare_log_path_is_a_journal_file_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    optuna.create_study(study_name="s", storage=open_storage("studies/sweep.log"))
    assert (tmp_path / "studies" / "sweep.log").stat().st_size > 0
    assert optuna.get_all_study_names(open_storage(f"journal://{tmp_path}/studies/sweep.log")) == ["s"]


def test_sqlite_storage_commits_to_a_write_ahead_log(tmp_path):
    """The default storage: every connection in WAL mode, synchronous=NORMAL (cheap commits), and what was
    committed is there for a second process opening the file."""
    import sqlite3

    url = f"sqlite:///{tmp_path}/optuna.db"
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name="wal")
    study.enqueue_trial({"x": 1})
    with storage._backend.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    with sqlite3.connect(tmp_path / "optuna.db") as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # kept by the file itself
        assert other.execute("SELECT count(*) FROM trials").fetchone()[0] == 1


def test_finished_metrics_finds_a_complete_plan_of_any_process(tmp_path):
    from optuna.distributions import CategoricalDistribution

    from autocompress.search.study import finished_metrics

    study = optuna.create_study(study_name="s", storage=open_storage(f"journal://{tmp_path}/j.log"))
    dist = {"bits": CategoricalDistribution([4, 8])}
    for state, bits, value in (("COMPLETE", 4, 0.9), ("FAIL", 8, None)):
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState[state], params={"bits": bits}, distributions=dist, value=value,
            user_attrs={"metrics": {"fidelity": 0.9}}))
    other = optuna.load_study(study_name="s", storage=open_storage(f"journal://{tmp_path}/j.log"))
    assert finished_metrics(other, {"bits": 4}) == {"fidelity": 0.9}
    assert finished_metrics(other, {"bits": 8}) is None  # failed: run it again
    read = other.get_trials(deepcopy=False)  # the driver passes the trials its loop just read
    assert finished_metrics(other, {"bits": 4}, read) == {"fidelity": 0.9}
    assert finished_metrics(other, {"bits": 8}, read) is None


@pytest.mark.parametrize("url, says", [
    ("optuna.db", "is not a storage URL; use sqlite:///"),
    ("foo://host/x", "unknown scheme 'foo'"),
    ("postgresql+pg8000://postgres@127.0.0.1/test", "needs the Python package 'pg8000', which is not installed; "
                                                    "pip install 'pg8000'"),
    ("journal://relative.log", "takes an absolute path, journal:///abs/path.log"),
    ("postgresql://me:s3cret@127.0.0.1:{port}/test", "start the server or fix host and port"),
    ("redis://127.0.0.1:{port}/0", "Connection refused; start the server or fix host and port"),
])
def test_storage_that_cannot_be_opened_is_a_one_line_user_error(url, says):
    url = url.format(port=free_port())  # nothing listens there
    with pytest.raises(UserError) as err:
        open_storage(url)
    message = str(err.value)
    assert message.startswith("storage ") and says in message and "\n" not in message
    assert "s3cret" not in message


def test_a_file_that_is_not_sqlite_is_named_as_a_file(tmp_path):
    """A truncated or overwritten optuna.db: the message is about the file, not a server (issue 27, 8)."""
    bad = tmp_path / "optuna.db"
    bad.write_bytes(b"not a database " * 100)
    with pytest.raises(UserError) as err:
        open_storage(f"sqlite:///{bad}")
    assert str(err.value) == (f"storage 'sqlite:///{bad}' is not a SQLite database (truncated or overwritten?); "
                              "move it away to start a new study, or put back a good copy")


def test_a_sqlite_error_never_says_start_the_server(tmp_path, monkeypatch):
    import optuna
    import sqlalchemy.exc

    def locked(*args, **kwargs):
        raise sqlalchemy.exc.OperationalError("PRAGMA journal_mode=WAL", {}, Exception("database is locked"))

    monkeypatch.setattr(optuna.storages, "RDBStorage", locked)
    with pytest.raises(UserError) as err:
        open_storage(f"sqlite:///{tmp_path}/optuna.db")
    assert str(err.value).endswith("database is locked; check the file, or move it away to start a new study")


def test_missing_redis_package_names_the_install(tmp_path):
    """In a fresh interpreter where `import redis` fails, as on a machine without the package."""
    code = ("import sys; sys.modules['redis'] = None\n"
            "from autocompress.search.storage import open_storage\n"
            "open_storage('redis://127.0.0.1:6379/0')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "storage 'redis://127.0.0.1:6379/0' needs the Python package 'redis'" in proc.stderr
    assert "pip install 'autocompress[cluster]'" in proc.stderr


def test_missing_database_says_to_create_it(postgres_url):  # noqa: F811
    base = postgres_url.rsplit("/", 1)[0]
    with pytest.raises(UserError, match="create the database first"):
        open_storage(f"{base}/no_such_db_{uuid.uuid4().hex[:8]}")


def test_cli_exits_2_naming_storage(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(f"model: {{name: 'random:bert'}}\nspace: {{quantize: {{bits: [4, 8]}}}}\n"
                    f"storage: redis://127.0.0.1:{free_port()}/0\ntracking: {{uri: none}}\n")
    assert main(["search", str(path), "--run-dir", str(tmp_path / "r"), "--quiet"]) == 2
    assert "storage 'redis://127.0.0.1:" in capsys.readouterr().err


def test_search_completes_and_resumes_on_each_storage(tmp_path, storage_url):
    study = unique_name("resume")
    try:
        first = make_config(tmp_path, storage=storage_url, study_name=study, budget={"n_trials": 3},
                            tracking={"uri": "none"})
        assert run_search(first, show_progress=False).counts == {"COMPLETE": 3}
        before = {t.number: (t.values, t.datetime_complete) for t in _trials(storage_url, study)}
        second = make_config(tmp_path, storage=storage_url, study_name=study, budget={"n_trials": 5},
                             tracking={"uri": "none"})
        assert run_search(second, show_progress=False).counts == {"COMPLETE": 5}
        trials = _trials(storage_url, study)
        assert [t.number for t in trials] == list(range(5))
        for t in trials[:3]:
            assert (t.values, t.datetime_complete) == before[t.number]  # resumed, not run again
        assert [t.user_attrs.get("baseline") for t in trials[:3]] == [
            "quantize bits=2", "quantize bits=4", "quantize bits=8"]  # enqueued once, by the first run
        assert study + LOCK_SUFFIX not in optuna.get_all_study_names(open_storage(storage_url))  # released
        assert len(RunDir.open(second.run_dir).trials) == 5  # `export`, `report`, `ui` read it back
    finally:
        delete_studies(storage_url, study)


def _trials(url: str, study: str) -> list:
    return optuna.load_study(study_name=study, storage=open_storage(url)).get_trials()


@pytest.mark.parametrize("kind", ["journal", "postgresql", "redis"])
def test_join_study_enqueues_once_across_processes(tmp_path, kind, request):
    url = f"journal://{tmp_path}/j.log" if kind == "journal" else \
        request.getfixturevalue("postgres_url" if kind == "postgresql" else "redis_url")
    study = unique_name("join")
    optuna.create_study(study_name=study, storage=open_storage(url))
    try:
        ctx = multiprocessing.get_context("spawn")
        barrier, results = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=join_in_child, args=(url, study, barrier, results)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
            assert p.exitcode == 0
        assert sorted(results.get(timeout=5) for _ in procs) == [0, 1, 2]  # one join number each
        trials = _trials(url, study)
        assert [(t.user_attrs["baseline"], t.state.name) for t in trials] == [
            ("b0", "WAITING"), ("b1", "WAITING"), ("b2", "WAITING")]  # once, although all three saw none
    finally:
        delete_studies(url, study)


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    url = f"journal://{tmp_path}/j.log"
    storage = open_storage(url)
    study = optuna.create_study(study_name="s", storage=storage)
    optuna.create_study(study_name="s" + LOCK_SUFFIX, storage=storage)  # as a holder killed inside the lock
    assert join_study(study, child_config(url, "s"), [("b0", {"x": 0})], stale_s=0.5) == 0
    assert [t.user_attrs["baseline"] for t in study.get_trials()] == ["b0"]
    with study_lock(study):  # and the lock works again
        assert "s" + LOCK_SUFFIX in optuna.get_all_study_names(storage)
    assert optuna.get_all_study_names(storage) == ["s"]


def open_at_once(url: str, n: int) -> list[str]:
    """Open the storage at `url` from `n` processes released together; what each reported ("ok" or its error)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=open_in_child, args=(url, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    return [results.get(timeout=5) for _ in procs]


def test_processes_creating_a_fresh_database_schema_at_once(postgres_url):  # noqa: F811
    """Several processes opening an empty database at once race to create Optuna's tables; all succeed."""
    with fresh_postgres_database(postgres_url, "ac_fresh") as url:
        assert open_at_once(url, 3) == ["ok"] * 3


def test_processes_creating_a_fresh_sqlite_schema_at_once(tmp_path):
    """The same race on a new SQLite file (a search and a script reading its study, say): SQLite reports the
    loser's duplicate table as an OperationalError, which is retried like the server databases' errors."""
    assert open_at_once(f"sqlite:///{tmp_path}/fresh.db", 4) == ["ok"] * 4


def test_only_a_lost_schema_race_is_retried(tmp_path, monkeypatch):
    import sqlalchemy.exc

    calls = []
    real = optuna.storages.RDBStorage

    def flaky(url, **kwargs):  # the first open loses the race, as a second process creating the tables does
        calls.append(url)
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError("CREATE TABLE study_directions", {},
                                                  Exception("table study_directions already exists"))
        return real(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", flaky)
    open_storage(f"sqlite:///{tmp_path}/a.db")
    assert len(calls) == 2
    calls.clear()
    monkeypatch.setattr(optuna.storages, "RDBStorage", lambda url, **k: (calls.append(url), (_ for _ in ()).throw(
        sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("unable to open database file"))))[1])
    with pytest.raises(UserError):
        open_storage(f"sqlite:///{tmp_path}/b.db")
    assert len(calls) == 1  # any other OperationalError is not retried
