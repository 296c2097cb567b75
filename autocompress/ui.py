"""`autocompress ui`: the MLflow UI and optuna-dashboard on a search's stores, as servers that live and die with it.

  autocompress ui [RUN_DIR] [--tracking-uri URI] [--host 127.0.0.1] [--port 5000] [--dashboard-port 8080]

Contract:
  - every port a server will bind is tried first, with a bind on --host as the server binds it (SO_REUSEADDR);
    one in use, or that cannot be bound, is a `UserError` naming the flag (exit 2), and nothing is started or
    printed. The dashboard's port is tried only when the dashboard will start.
  - each server runs in its own session (process group), so that stopping it reaches everything it started
    (`mlflow ui` runs `mlflow server`, which runs uvicorn and its workers).
  - SIGINT, SIGTERM and SIGHUP to `ui`, its return and interpreter exit each stop every group: SIGTERM, up to
    STOP_S seconds for the group to go, then SIGKILL. A requested stop exits 0. (A SIGKILL to `ui` itself cannot
    be caught: its servers are left running then.)
  - `ui` runs while all its servers run: one that stops on its own is named with its exit code on stderr, the
    others are stopped and `ui` exits 1.
  - the MLflow URL printed opens the study's experiment on its runs table when the experiment is found.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from contextlib import closing
from pathlib import Path

from autocompress.errors import UserError
from autocompress.secrets import mask_url

STOP_S = 10.0  # per stop: how long the servers get to exit on SIGTERM before SIGKILL
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def check_port(host: str, port: int, flag: str, other: str = "") -> None:
    """Refuse (`UserError` naming `flag`) a port that a server could not bind on `host`; `other` is appended to
    the fix (e.g. " or --no-dashboard")."""
    if not 0 < port < 65536:
        raise UserError(f"{flag} {port} is not a port; pass {flag} N with N from 1 to 65535")
    try:
        addresses = {info[4][:2]: info for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                       flags=socket.AI_PASSIVE)}
    except socket.gaierror as exc:
        raise UserError(f"--host {host!r} cannot be resolved ({exc.strerror}); pass --host 127.0.0.1") from None
    failures = []
    for family, kind, proto, _, address in addresses.values():
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no clash
            try:
                s.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise UserError(f"{flag} {port} is in use (by another process) on {host}; "
                                    f"pass {flag} N{other}") from None
                failures.append(exc)
    if failures and len(failures) == len(addresses):
        raise UserError(f"{flag} {port} cannot be bound on {host}: {failures[0].strerror}; "
                        f"pass another {flag} or --host 127.0.0.1") from None


def _group_alive(pgid: int) -> bool:
    """Some process of group `pgid` still runs (zombies, which hold no port, do not count; read from /proc)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir("/proc"):
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if int(group) == pgid and state != "Z":
            return True
    return False


class Servers:
    """Child servers, each leading its own process group; `stop()` ends every group (idempotent)."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.signalled: int | None = None

    def start(self, name: str, cmd: list[str], **popen) -> None:
        self.procs.append((name, subprocess.Popen(cmd, start_new_session=True, **popen)))

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signalled = signum

    def wait(self) -> int:
        """Block until a signal (-> 0) or until a server stops on its own (-> 1, named on stderr)."""
        while self.signalled is None:
            for name, proc in self.procs:
                code = proc.poll()
                if code is not None:
                    fix = "its output is above" if name == "the MLflow UI" else "--no-dashboard goes without it"
                    print(f"error: {name} stopped (exit {code}); {fix}", file=sys.stderr, flush=True)
                    return 1
            time.sleep(0.2)
        return 0

    def stop(self) -> None:
        """SIGTERM to every group, wait up to STOP_S seconds for all to go, SIGKILL what is left (and wait 5 s)."""
        self._send(signal.SIGTERM, [proc for _, proc in self.procs])
        left = self._wait_groups(STOP_S)
        if left:
            self._send(signal.SIGKILL, left)
            self._wait_groups(5.0)
        self.procs = [(name, proc) for name, proc in self.procs if proc.poll() is None]

    @staticmethod
    def _send(sig: int, procs: list[subprocess.Popen]) -> None:
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _wait_groups(self, seconds: float) -> list[subprocess.Popen]:
        """The leaders whose groups still run after waiting up to `seconds` for all to go."""
        deadline = time.monotonic() + seconds
        while True:
            for _, proc in self.procs:
                proc.poll()  # reap the leader, so that only live members keep its group
            left = [proc for _, proc in self.procs if _group_alive(proc.pid)]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.1)


def _tracking(args: argparse.Namespace) -> tuple[str, str | None, str]:
    """(MLflow URI, Optuna storage URL or None, experiment name) from --tracking-uri or the run's config."""
    uri, storage, experiment = args.tracking_uri, None, "autocompress"
    if args.run_dir:
        from autocompress.config import read_yaml

        cfg_path = os.path.join(args.run_dir, "config.yaml")
        if not os.path.isfile(cfg_path):
            raise UserError(f"{args.run_dir!r} is not a run directory (no config.yaml); give the run_dir of a search")
        cfg = read_yaml(cfg_path)
        storage = cfg.get("storage")
        tracking = cfg.get("tracking") or {}
        uri = uri or tracking.get("uri", "sqlite:///mlflow.db")
        experiment = tracking.get("experiment") or experiment
    from autocompress.secrets import expand_env  # a run directory keeps ${NAME} where a password was

    storage = expand_env(storage, "storage") if isinstance(storage, str) else storage
    return expand_env(uri or "sqlite:///mlflow.db", "tracking.uri"), storage, experiment


def experiment_id(uri: str, name: str) -> str | None:
    """The id of the active experiment `name` in the store at `uri` (a SQLite file, read only, or an MLflow
    server, asked for 5 s at most); None when it is not found or the store cannot say."""
    try:
        if uri.startswith("sqlite:///"):
            path = Path(uri[len("sqlite:///"):].split("?")[0]).absolute()
            with closing(sqlite3.connect(path.as_uri() + "?mode=ro", uri=True, timeout=2)) as db:
                row = db.execute("SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = "
                                 "'active'", (name,)).fetchone()
            return str(row[0]) if row else None
        if uri.startswith(("http://", "https://")):
            url = (f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?"
                   + urllib.parse.urlencode({"experiment_name": name}))
            with urllib.request.urlopen(url, timeout=5) as answer:
                return json.load(answer).get("experiment", {}).get("experiment_id")
    except (sqlite3.Error, OSError, ValueError):
        pass
    return None


def runs_url(base: str, exp_id: str | None) -> str:
    """The MLflow UI page of an experiment's runs table (MLflow 3 routes), or `base` without an experiment."""
    return f"{base.rstrip('/')}/#/experiments/{exp_id}/runs" if exp_id else base


def _executable(name: str) -> str:
    return shutil.which(name) or os.path.join(os.path.dirname(sys.executable), name)


def cmd_ui(args: argparse.Namespace) -> int:
    """Start the MLflow UI on the study's tracking store (127.0.0.1 unless --host says otherwise), and
    optuna-dashboard on its Optuna storage when that is installed; run until a signal (module contract)."""
    uri, storage, experiment = _tracking(args)
    if uri == "none":
        raise UserError("this search ran with tracking.uri: none; there is nothing for the MLflow UI to show")
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        raise UserError(f"no MLflow store at {uri}; run a search first or pass --tracking-uri")
    serve_mlflow = not uri.startswith(("http://", "https://"))
    dash_exe = _executable("optuna-dashboard")
    dashboard = (not args.no_dashboard and storage is not None and os.path.exists(dash_exe)
                 and storage.startswith(("sqlite:", "postgresql", "mysql")))
    if serve_mlflow:
        check_port(args.host, args.port, "--port")
    if dashboard:
        check_port(args.host, args.dashboard_port, "--dashboard-port", " or --no-dashboard")
    exp_id = experiment_id(uri, experiment)
    if not serve_mlflow and not dashboard:
        print(f"MLflow is served at {mask_url(runs_url(uri, exp_id))}", flush=True)
        return 0

    servers = Servers()
    previous = {sig: signal.signal(sig, servers._on_signal) for sig in SIGNALS}
    atexit.register(servers.stop)
    try:
        if serve_mlflow:
            servers.start("the MLflow UI", [_executable("mlflow"), "ui", "--backend-store-uri", uri, "--host",
                                            args.host, "--port", str(args.port)],
                          env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
            print(f"MLflow UI: {runs_url(f'http://{args.host}:{args.port}', exp_id)}  (store {mask_url(uri)}; "
                  "Ctrl-C stops it)", flush=True)
        else:
            print(f"MLflow is served at {mask_url(runs_url(uri, exp_id))}", flush=True)
        if dashboard:
            servers.start("optuna-dashboard", [dash_exe, storage, "--host", args.host, "--port",
                                               str(args.dashboard_port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            print(f"optuna-dashboard: http://{args.host}:{args.dashboard_port}  "
                  f"(study storage {mask_url(storage)})", flush=True)
        return servers.wait()
    finally:
        servers.stop()
        atexit.unregister(servers.stop)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
