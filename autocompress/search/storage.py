"""The Optuna storage of a search, opened from one URL (config key `storage`). Optuna does the storing; this
module maps a URL onto Optuna's storage classes and turns every failure to open one into a one-line
`UserError` that names `storage` and the fix.

URL forms (`storage_kind(url)` names each):
  sqlite:///PATH.db          "sqlite"   Optuna's RDBStorage on a file; the default (run_dir/optuna.db); no
                                        server. One machine; fine for a single search, not for sweeps.
                                        Opened in WAL mode with synchronous=NORMAL (`_sqlite_wal`), so the
                                        file needs a local file system.
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

from autocompress.errors import UserError
from autocompress.secrets import mask_url

CONNECT_TIMEOUT_S = 10
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
        raise _explain(url, exc) from None


def _rdb(url: str, kind: str) -> Any:
    import optuna
    import sqlalchemy.exc

    if kind == "sqlite" and url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):].split("?")[0]
        if path and path != ":memory:":
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


def _explain(url: str, exc: Exception) -> UserError:
    """One line for an exception raised while opening `url`: what failed, then the fix."""
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
