"""The Optuna storage of a search, opened from one URL (config key `storage`). Optuna does the storing; this
module maps a URL onto Optuna's storage classes and turns every failure to open one into a one-line
`UserError` that names `storage` and the fix.

URL forms (`storage_kind(url)` names each):
  sqlite:///PATH.db          "sqlite"   Optuna's RDBStorage on a file; the default (run_dir/optuna.db); no
                                        server. One machine; fine for a single search, not for sweeps.
                                        Opened in WAL mode with synchronous=NORMAL (`_sqlite_wal`), so the
                                        file needs a local file system. An existing file must be a
                                        SQLite database holding an Optuna storage (`check_sqlite_file`).
  postgresql://USER@HOST[:PORT]/DB, mysql+pymysql://..., any SQLAlchemy URL
                             "rdb"      RDBStorage on a database server: the team set-up, safe for sweeps
                                        (several `autocompress search` processes on one study). The driver
                                        package must be installed: `pip install 'autocompress[cluster]'`
                                        brings psycopg 3, which SQLAlchemy 2.1 uses for postgresql://
                                        (postgresql+psycopg2:// picks psycopg2). The database must exist.
  journal:///ABS/PATH.log    "journal"  Optuna's JournalStorage on a file (JournalFileBackend, its symlink lock
  PATH.log                              works on NFS): no server, safe for sweeps on one machine or a shared
                                        file system. A bare path ending in .log is relative to the working
                                        directory. The parent directory is created.
  redis://HOST:PORT/DB       "redis"    JournalStorage on Redis (JournalRedisBackend; also rediss:// for TLS
                                        and unix:///path.sock?db=N): safe for sweeps across machines.

A URL that cannot be opened (bad scheme, missing driver package, server down, database missing) raises
`UserError`. Passwords in URLs never appear in messages (`display_url`, which is `secrets.mask_url`).
Connecting gives up after `CONNECT_TIMEOUT_S` unless the URL sets its own timeout (postgresql
`connect_timeout`, redis `socket_connect_timeout`).
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from autocompress.errors import UserError, echo
from autocompress.secrets import mask_url

CONNECT_TIMEOUT_S = 10
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
FORMS = ("sqlite:///PATH.db, postgresql://USER@HOST:PORT/DB, journal:///ABS/PATH.log (or PATH.log) "
         "or redis://HOST:PORT/DB")
# module -> pip package; SQLAlchemy 2.1 opens postgresql:// with psycopg (3), 2.0 with psycopg2
_DRIVERS = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "redis": "redis", "MySQLdb": "mysqlclient"}
_CLUSTER_EXTRA = ("psycopg", "redis")  # what `pip install 'autocompress[cluster]'` installs


def storage_kind(url: str) -> str:
    """'sqlite', 'rdb' (any other SQLAlchemy URL), 'journal' (a file) or 'redis'. Raises `UserError` for a
    string that is none of the URL forms in the module docstring."""
    if url.startswith("journal://") or ("://" not in url and url.endswith(".log")):
        return "journal"
    if url.startswith(("redis://", "rediss://", "unix://")):
        return "redis"
    if url.startswith("sqlite:"):
        return "sqlite"
    if re.match(r"^[A-Za-z][\w+.-]*://", url):
        return "rdb"
    raise UserError(f"storage {url!r} is not a storage URL; use {FORMS} (or leave it out for SQLite in the "
                    "run directory)")


display_url = mask_url  # the URL with any password shown as ***: what messages, logs and tags show


def journal_path(url: str) -> str:
    """The absolute log file path of a journal URL: journal:///abs/x.log -> /abs/x.log, x.log -> $PWD/x.log."""
    if url.startswith("journal://"):
        path = url[len("journal://"):]
        if not path.startswith("/"):
            raise UserError(f"storage {url!r}: a journal URL takes an absolute path, journal:///abs/path.log "
                            "(three slashes), or give a plain path ending in .log")
        return path
    return os.path.abspath(url)


def sqlite_path(url: str) -> str | None:
    """The file of a sqlite:/// URL (relative to the working directory unless absolute); None for an in-memory
    database or another kind of URL."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?")[0]
    return path if path and path != ":memory:" else None


def check_sqlite_file(url: str) -> None:
    """The existing file of a sqlite URL opens as a SQLite database and holds an Optuna storage, or no tables
    yet (a missing or empty file is a new storage). `UserError` naming the file otherwise: a truncated or
    overwritten file, a damaged one (`PRAGMA quick_check`), another program's database. Changes nothing."""
    path = sqlite_path(url)
    if path is None or not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    import sqlite3
    import urllib.parse

    where = f"storage {echo(display_url(url))}"
    fix = "move it away to start a new study, or put back a good copy"
    with open(path, "rb") as fh:
        if fh.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            raise UserError(f"{where} is not a SQLite database (truncated or overwritten?); {fix}")
    try:  # mode=rw: never creates the file, and a clean close removes the -wal and -shm files it opened
        con = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=rw", uri=True, timeout=10)
        try:
            tables = sorted(row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
            check = con.execute("PRAGMA quick_check(1)").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):  # another process of a sweep is writing it: not damaged
            return
        check = str(exc)
    except sqlite3.DatabaseError as exc:
        check = str(exc)
    if check != "ok":
        raise UserError(f"{where} is a damaged SQLite database ({check}; truncated?); {fix}")
    if tables and "studies" not in tables:
        shown = ", ".join(tables[:6]) + (", ..." if len(tables) > 6 else "")
        raise UserError(f"{where} is a SQLite database but not an Optuna storage (its tables: {shown}); name "
                        "another file, or leave storage out for optuna.db in the run directory")


def open_storage(url: str) -> Any:
    """An Optuna storage (`optuna.storages.BaseStorage`) for `url`, created if new (tables, log file): for
    the sqlite and rdb kinds `_CachedStorage(RDBStorage(url))`, what `optuna.storages.get_storage(url)`
    gives; for the journal kinds `JournalStorage(backend)`. Raises `UserError` when it cannot be opened."""
    kind = storage_kind(url)
    try:
        if kind == "journal":
            return _journal_file(url)
        if kind == "redis":
            return _journal_redis(url)
        return _rdb(url, kind)
    except UserError:
        raise
    except Exception as exc:  # SQLAlchemy, DB-API, redis and OS errors vary by backend: one line each
        raise _explain(url, exc, kind) from None


def close_storage(storage: Any) -> None:
    """Close the database connections of an RDB storage from `open_storage` (a SQLite file's last connection
    removes its -wal and -shm files); nothing for a journal storage."""
    engine = getattr(getattr(storage, "_backend", storage), "engine", None)  # _CachedStorage(RDBStorage)
    if engine is not None:
        engine.dispose()


def _rdb(url: str, kind: str) -> Any:
    import optuna
    import sqlalchemy.exc

    path = sqlite_path(url) if kind == "sqlite" else None
    if path is not None:
        check_sqlite_file(url)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("postgresql") and "connect_timeout" not in url:
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    for attempt in range(3):
        try:
            rdb = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
            if kind == "sqlite":
                _sqlite_wal(rdb.engine)
            return optuna.storages._CachedStorage(rdb)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as exc:
            # several processes creating the tables of a fresh database at once: the losers of that race
            # fail on a duplicate table or version row (SQLite: "table ... already exists", an OperationalError
            # like a server that is down, which is not retried); the schema exists now, so opening again succeeds
            lost_race = not isinstance(exc, sqlalchemy.exc.OperationalError) or "already exists" in str(exc)
            if attempt == 2 or not lost_race:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _sqlite_wal(engine: Any) -> None:
    """Every connection of `engine` (a SQLite file) in write-ahead-log mode with synchronous=NORMAL: a
    commit appends to the log instead of syncing the database file, about 50x cheaper here (2.5 ms -> 0.05
    ms; a search commits a dozen times per trial). Crash-safe for the process (a killed driver loses
    nothing committed); an OS crash or power loss may lose the last commits, never corrupts the file.
    WAL needs a local file system (not NFS), as SQLite itself does for more than one process."""
    from sqlalchemy import event

    if engine.url.database in (None, "", ":memory:"):
        return

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    engine.dispose()  # connections opened while creating the tables reconnect with the pragmas


def _journal_file(url: str) -> Any:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    path = journal_path(url)
    if os.path.isdir(path):
        raise UserError(f"storage {url!r} is a directory; name a file, e.g. journal://{path}/optuna.log")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return JournalStorage(JournalFileBackend(path))


def _journal_redis(url: str) -> Any:
    import warnings

    import optuna
    from optuna.storages.journal import JournalRedisBackend, JournalStorage

    if "socket_connect_timeout" not in url:
        url += ("&" if "?" in url else "?") + f"socket_connect_timeout={CONNECT_TIMEOUT_S}"
    with warnings.catch_warnings():  # JournalRedisBackend is marked experimental since Optuna 3.1
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        backend = JournalRedisBackend(url)
    return JournalStorage(backend)  # reads the log (or its snapshot) at once: a dead server fails here


def _explain(url: str, exc: Exception, kind: str) -> UserError:
    """One line for an exception raised while opening `url` (of `storage_kind` `kind`): what failed, then the
    fix; "start the server" only for a storage that has one."""
    shown = display_url(url)
    missing = _missing_module(exc)
    if missing:
        package = _DRIVERS.get(missing, missing)
        extra = " (or pip install 'autocompress[cluster]')" if missing in _CLUSTER_EXTRA else ""
        other = {"psycopg": " (with psycopg2 installed instead, write postgresql+psycopg2://)",
                 "psycopg2": " (with psycopg 3 installed instead, write postgresql+psycopg://)"}.get(missing, "")
        return UserError(f"storage {shown!r} needs the Python package {package!r}, which is not installed; "
                         f"pip install '{package}'{extra}{other}")
    text = " ".join(str(exc).split())
    if type(exc).__name__ == "NoSuchModuleError":  # SQLAlchemy knows no dialect/driver of that name
        scheme = url.split("://")[0]
        return UserError(f"storage {shown!r}: unknown scheme {scheme!r}; use {FORMS}")
    reason = re.sub(r"^\(\w+(\.\w+)*\) ", "", text)  # drop SQLAlchemy's "(psycopg2.OperationalError) " prefix
    reason = reason.split(" (Background on this error")[0].split("[SQL:")[0].strip().rstrip(".")
    if any(w in reason.lower() for w in ("password", "authentication", "role ")):
        fix = "check the user and password in the URL"
    elif isinstance(exc, OSError) and not type(exc).__module__.startswith("redis"):
        fix = "use a path this user can create and write"
    elif "does not exist" in reason and "database" in reason:
        fix = "create the database first (e.g. `createdb NAME`) or name an existing one"
    elif kind in ("sqlite", "journal"):
        fix = "check the file, or move it away to start a new study"
    elif type(exc).__module__.startswith(("redis", "psycopg", "pymysql", "sqlalchemy")) or "connect" in reason.lower():
        fix = "start the server or fix host and port in the URL"
    else:
        fix = f"use {FORMS}"
    reason = reason if len(reason) <= 300 else reason[:297] + "..."
    return UserError(f"storage {shown!r} cannot be opened: {reason or type(exc).__name__}; {fix}")


def _missing_module(exc: BaseException) -> str | None:
    """The top-level name of a module whose import failed somewhere in `exc`'s chain, else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ModuleNotFoundError) and seen.name:
            return seen.name.split(".")[0]
        if isinstance(seen, ImportError):
            m = re.search(r"import '?(\w+)'? but failed", str(seen))  # optuna's try_import message
            if m:
                return m.group(1)
        seen = seen.__cause__ or seen.__context__
    return None
