"""`autocompress ui` as a process manager sees it: a taken port is refused before anything starts (exit 2, one
line naming the port), and every signal or exit stops the servers it started, grandchildren included.

The fast tests put fake `mlflow` and `optuna-dashboard` executables first on PATH: each forks a grandchild that
listens on its --port and waits for it, as `mlflow ui` waits for uvicorn, so that a signal reaching only the
direct child would leave the listener behind. The slow ones start the real servers. Linux (/proc) only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.search.conftest import free_port
from tests.support import stop_process_group
from tests.test_security import _listening_addresses

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads /proc (Linux)")

FAKE = f"""#!{sys.executable}
import os, socket, subprocess, sys, time
argv = sys.argv[1:]
host, port = argv[argv.index("--host") + 1], int(argv[argv.index("--port") + 1])
if os.environ.get("FAKE_EXIT") == os.path.basename(sys.argv[0]):
    time.sleep(1)
    sys.exit(3)
serve = "import socket, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); " \\
        f"s.bind(({{host!r}}, {{port}})); s.listen(); time.sleep(3600)"
subprocess.Popen([sys.executable, "-c", serve]).wait()
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory whose config names an MLflow store holding the experiment a search creates, and an
    Optuna storage with its tables (no study)."""
    import optuna
    import yaml

    from autocompress.search.tracking.runs import Tracker

    tmp = tmp_path_factory.mktemp("ui")
    uri, storage = f"sqlite:///{tmp / 'mlflow.db'}", f"sqlite:///{tmp / 'optuna.db'}"
    Tracker.open(uri, "autocompress", "tiny", storage, {}, str(tmp / "run")).close()
    optuna.storages.RDBStorage(storage)
    (tmp / "run").mkdir()
    (tmp / "run" / "config.yaml").write_text(yaml.safe_dump({"storage": storage, "tracking": {"uri": uri}}))
    return tmp / "run"


@pytest.fixture
def fakes(tmp_path) -> dict:
    """The environment of a `ui` that finds the fake `mlflow` and `optuna-dashboard` first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("mlflow", "optuna-dashboard"):
        (bin_dir / name).write_text(FAKE)
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def _need_dashboard() -> None:
    if not (shutil.which("optuna-dashboard") or (Path(sys.executable).parent / "optuna-dashboard").exists()):
        pytest.skip("optuna-dashboard is not installed")


def _ui(run_dir: Path, ports: tuple[int, int], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autocompress", "ui", str(run_dir), "--port", str(ports[0]),
                             "--dashboard-port", str(ports[1])], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)


def _finish(proc: subprocess.Popen, seconds: float) -> tuple[str, str]:
    """(stdout, stderr) of `proc` once it exits; stopped (with its process group) and failed after `seconds`."""
    try:
        return proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        stop_process_group(proc)
        pytest.fail(f"`autocompress ui` still ran after {seconds:g} s: {proc.communicate()}")


def _alive(pid: int) -> bool:
    """`pid` exists and is not a zombie (an exited process nobody reaped yet holds no port)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _descendants(pid: int) -> set[int]:
    """The PIDs of every live process below `pid` (children, grandchildren, ...), from /proc/*/stat."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier and p not in found}
        found |= frontier
    return {p for p in found if _alive(p)}


def _wait_listening(proc: subprocess.Popen, ports: tuple[int, ...], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not all(_listening_addresses(p) for p in ports):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process_group(proc)
            pytest.fail(f"`autocompress ui` did not listen on {ports} within {seconds:g} s: {proc.communicate()}")
        time.sleep(0.3)


def _stop_and_check(proc: subprocess.Popen, ports: tuple[int, int], signum: int, seconds: float) -> str:
    """Send `signum` to `ui` alone (not its group, as a process manager does), wait for it, and check that no
    process it started is left and both ports are free; its stdout."""
    started = _descendants(proc.pid)
    assert len(started) >= 3, started  # each server and the listener under `mlflow`
    try:
        os.kill(proc.pid, signum)
        out, err = _finish(proc, seconds)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        deadline = time.monotonic() + 5  # a grandchild re-parented to init is reaped by it, not by `ui`
        while any(_alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in started if _alive(p)], "left running after `ui` exited"
        assert not any(_listening_addresses(p) for p in ports)
        return out
    finally:
        for pid in started:  # whatever a failed check left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _refused(run_dir: Path, taken: int, ports: tuple[int, int], flag: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", taken))
        s.listen()
        proc = _ui(run_dir, ports)
        out, err = _finish(proc, 60)
    assert proc.returncode == 2, (out, err)
    assert err.strip().splitlines() == [f"error: {flag} {taken} is in use (by another process) on 127.0.0.1; "
                                        f"pass {flag} N" + (" or --no-dashboard" if "dash" in flag else "")]
    assert out == ""  # no URL printed for a server that never started
    assert not any(_listening_addresses(p) for p in ports if p != taken)


def test_taken_mlflow_port_is_refused_before_anything_starts(run_dir):
    port, dash = free_port(), free_port()
    _refused(run_dir, port, (port, dash), "--port")


def test_taken_dashboard_port_is_refused_before_anything_starts(run_dir):
    _need_dashboard()
    port, dash = free_port(), free_port()
    _refused(run_dir, dash, (port, dash), "--dashboard-port")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_stops_every_server(run_dir, fakes, signum):
    ports = (free_port(), free_port())
    proc = _ui(run_dir, ports, fakes)
    _wait_listening(proc, ports, 30)
    out = _stop_and_check(proc, ports, signum, 30)
    assert f"http://127.0.0.1:{ports[0]}/#/experiments/1/runs" in out  # the runs table, not the GenAI overview


def test_a_server_that_stops_stops_the_other(run_dir, fakes):
    ports = (free_port(), free_port())
    proc = _ui(run_dir, ports, {**fakes, "FAKE_EXIT": "optuna-dashboard"})
    out, err = _finish(proc, 30)
    assert proc.returncode == 1 and "optuna-dashboard stopped (exit 3)" in err and "Traceback" not in err
    assert not any(_listening_addresses(p) for p in ports)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM], ids=lambda s: s.name)  # SIGINT and SIGHUP: the fast tests above
def test_a_signal_stops_the_real_servers(run_dir, signum):
    """The real MLflow UI (uvicorn under `mlflow server`) and optuna-dashboard: nothing listens after `ui`."""
    _need_dashboard()
    ports = (free_port(), free_port())
    proc = _ui(run_dir, ports)
    _wait_listening(proc, ports, 180)
    _stop_and_check(proc, ports, signum, 60)


def test_a_server_that_ignores_sigterm_is_killed(monkeypatch):
    """`Servers.stop`: a group still there STOP_S seconds after SIGTERM gets SIGKILL, grandchildren included."""
    from autocompress import ui

    monkeypatch.setattr(ui, "STOP_S", 1.0)
    deaf = "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
           "subprocess.Popen([sys.executable, '-c', 'import signal, time; " \
           "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); time.sleep(60)"
    servers = ui.Servers()
    servers.start("deaf", [sys.executable, "-c", deaf])
    leader = servers.procs[0][1].pid
    deadline = time.monotonic() + 20
    while not _descendants(leader):  # the leader ignores SIGTERM before it starts the grandchild
        assert time.monotonic() < deadline, "the grandchild did not start"
        time.sleep(0.1)
    started, begun = {leader} | _descendants(leader), time.monotonic()
    servers.stop()
    assert not [p for p in started if _alive(p)] and servers.procs == []
    assert time.monotonic() - begun >= 1.0  # SIGTERM was ignored: SIGKILL ended them
