"""Faults during a search, each made real and each with nothing lost: a trial that raises, returns NaN or runs
out of memory; a hung trial (trial timeout); a worker process killed mid-trial (retried once, then FAIL); the
driver killed mid-search (resume); a driver on another host that stops sending heartbeats; MLflow going away
mid-search. Faults are injected with the test hook in autocompress/search/workers/fault_hook.py (environment
variables, so they reach Ray actors and child processes), and processes are killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Callable

import optuna
import pytest
from mlflow import MlflowClient

from autocompress.config import SearchConfig
from autocompress.errors import UserError
from autocompress.search.driver import run_search
from tests.search.conftest import free_port

SPACE = {"quantize": {"bits": [2, 4, 8, None], "group_size": [16, 64], "method": ["rtn", "gptq"]},
         "structured": {"sparsity": [0.0, 0.5]}}
WAIT_S = 180  # the longest a script step waits for its marker before giving up (and releasing every trial)


def config_dict(tmp_path: Path, **extra) -> dict:
    data = {"model": {"name": "random:bert"}, "data": {"calibration": {"n": 8}, "evaluation": {"n": 16}},
            "space": SPACE, "budget": {"n_trials": 6}, "sampler": {"population_size": 4, "seed": 0},
            "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}, "run_dir": str(tmp_path / "run"),
            "study_name": "faults"}
    data.update(extra)
    return data


def make_config(tmp_path: Path, **extra) -> SearchConfig:
    return SearchConfig.from_dict(config_dict(tmp_path, **extra)).resolved(tmp_path)


def trials_of(config: SearchConfig) -> list:
    return optuna.load_study(study_name=config.study_name, storage=config.storage).get_trials()


def mlflow_runs(uri: str, study: str = "faults") -> tuple[list, list]:
    """(parent runs of the study, their children), active runs only."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("autocompress")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("autocompress.study_name") == study]
    ids = {p.info.run_id for p in parents}
    return parents, [r for r in runs if r.data.tags.get("mlflow.parentRunId") in ids]


def by_number(kids: list) -> dict[int, list]:
    out: dict[int, list] = {}
    for k in kids:
        out.setdefault(int(k.data.tags["autocompress.trial_number"]), []).append(k)
    return out


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


class Script(threading.Thread):
    """Runs `steps` in order beside a search: each waits for a marker file that the hook's `wait` writes
    (`trial-N.A.pid`, holding the worker's pid) and then acts on it. If a marker never comes, every waiting
    trial is released so the search ends, and `error` says which step was missed."""

    def __init__(self, folder: Path, steps: list[tuple[str, Callable[[int], None]]]) -> None:
        super().__init__(daemon=True)
        self.folder, self.steps, self.error = folder, steps, None
        self.pids: dict[str, int] = {}

    def go(self, number: int) -> None:
        (self.folder / f"trial-{number}.go").touch()

    def run(self) -> None:
        for marker, action in self.steps:
            path = self.folder / f"trial-{marker}.pid"
            deadline = time.monotonic() + WAIT_S
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not path.exists():
                self.error = f"marker {path.name} never appeared"
                for n in range(100):
                    self.go(n)
                return
            self.pids[marker] = int(path.read_text())
            try:
                action(self.pids[marker])
            except Exception as exc:  # reported by the test after the search
                self.error = f"step {marker}: {type(exc).__name__}: {exc}"
                for n in range(100):
                    self.go(n)
                return


@pytest.fixture
def faults(tmp_path, monkeypatch):
    """Sets the fault hook's variables: `faults("2:raise,3:wait")` -> the marker folder; `faults(None)` unsets."""
    folder = tmp_path / "faults"
    folder.mkdir()
    monkeypatch.setenv("AUTOCOMPRESS_TEST_FAULTS_DIR", str(folder))

    def set_faults(spec: str | None) -> Path:
        if spec is None:
            monkeypatch.delenv("AUTOCOMPRESS_TEST_FAULTS", raising=False)
        else:
            monkeypatch.setenv("AUTOCOMPRESS_TEST_FAULTS", spec)
        return folder

    return set_faults


def test_raise_nan_and_out_of_memory_end_fail_with_their_error_and_the_search_goes_on(tmp_path, faults):
    faults("1:raise,2:nan,3:oom,4:memory")
    config = make_config(tmp_path)
    result = run_search(config, show_progress=False)
    trials = trials_of(config)
    errors = {t.number: t.user_attrs.get("error", "") for t in trials}
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL", "FAIL", "FAIL", "COMPLETE"]
    assert "RuntimeError: injected failure" in errors[1]
    assert errors[2].startswith("non-finite metric fidelity = nan")
    assert errors[3].startswith("out of memory: OutOfMemoryError: CUDA out of memory")
    assert errors[4].startswith("out of memory: MemoryError")
    assert result.counts == {"COMPLETE": 2, "FAIL": 4} and result.untracked == []
    parents, kids = mlflow_runs(config.tracking.uri)
    logged = by_number(kids)
    assert sorted(logged) == list(range(6)) and all(len(v) == 1 for v in logged.values())
    for n in (1, 2, 3, 4):
        kid = logged[n][0]
        assert kid.info.status == "FAILED" and kid.data.tags["autocompress.error"] == errors[n]
    assert parents[0].info.status == "FINISHED"


@pytest.mark.slow  # starts several processes (workers, a driver, an MLflow server)
def test_local_hung_trial_times_out_and_a_killed_worker_is_retried(tmp_path, faults):
    """budget.trial_timeout_s on the local backend: trials run in a child process, which is killed when a trial
    hangs (FAIL "timed out") and replaced when it dies (the trial retried there with the same plan)."""
    folder = faults("1:wait,2:crash@0")
    config = make_config(tmp_path, budget={"n_trials": 3, "trial_timeout_s": 8})
    script = Script(folder, [("1.0", lambda pid: None)])
    script.start()
    result = run_search(config, show_progress=False)
    script.join()
    assert script.error is None, script.error
    t0, t1, t2 = trials_of(config)
    hung_pid = script.pids["1.0"]
    print(f"\nhung trial: FAIL {t1.user_attrs['error']!r}; its worker pid {hung_pid} killed: {gone(hung_pid)}")
    assert t1.state.name == "FAIL" and t1.user_attrs["error"].startswith("timed out after 8 s")
    assert gone(hung_pid), "the hung worker process must have been killed"
    assert t0.user_attrs["worker"].endswith(f":{hung_pid}")  # the same child ran trial 0, then hung on 1
    assert t2.state.name == "COMPLETE" and t2.user_attrs["retries"] == 1
    assert "killed by signal 9" in t2.user_attrs["retry_reasons"][0]
    assert t2.user_attrs["worker"] != t0.user_attrs["worker"]  # a new child (the third: after the crash)
    assert result.counts == {"COMPLETE": 2, "FAIL": 1}
    assert all(t.user_attrs["worker"].split(":")[1] != str(os.getpid()) for t in (t0, t2))  # not in the driver


@pytest.mark.slow  # starts several processes (workers, a driver, an MLflow server)
def test_ray_worker_killed_mid_trial_is_retried_once_then_fails_and_a_hung_one_times_out(tmp_path, faults):
    """Ray, one actor: trial 2's actor is SIGKILLed once (retried on a new actor, same plan, completes); trial
    4's actor is SIGKILLed on both attempts (FAIL with the reason); trial 5 hangs (timed out, actor killed).
    The study still reaches its budget."""
    folder = faults("2:wait,4:wait,5:wait")
    config = make_config(tmp_path, backend={"name": "ray", "workers": 1, "max_retries": 1},
                         budget={"n_trials": 6, "trial_timeout_s": 15})
    script = Script(folder, [("2.0", kill), ("2.1", lambda pid: script.go(2)), ("4.0", kill), ("4.1", kill),
                             ("5.0", lambda pid: None)])
    script.start()
    result = run_search(config, show_progress=False)
    script.join()
    assert script.error is None, script.error
    trials = trials_of(config)
    assert len(trials) == 6 and result.counts == {"COMPLETE": 4, "FAIL": 2}
    t2, t4, t5 = trials[2], trials[4], trials[5]
    print(f"\ntrial 2: {t2.state.name} after {t2.user_attrs['retries']} retry ({t2.user_attrs['retry_reasons'][0]})"
          f"\ntrial 4: {t4.user_attrs['error']}\ntrial 5: {t5.user_attrs['error']}")
    assert t2.state.name == "COMPLETE" and t2.user_attrs["retries"] == 1
    assert "ActorDiedError" in t2.user_attrs["retry_reasons"][0]
    assert t2.user_attrs["worker"].endswith(f":{script.pids['2.1']}") and script.pids["2.1"] != script.pids["2.0"]
    assert t4.state.name == "FAIL" and t4.user_attrs["error"].startswith("worker lost 2 times (backend.max_retries=1)")
    assert len({script.pids["4.0"], script.pids["4.1"]}) == 2
    assert t5.state.name == "FAIL" and t5.user_attrs["error"].startswith("timed out after 15 s")
    assert all(gone(pid) for pid in script.pids.values())  # every killed or hung actor process is gone
    _, kids = mlflow_runs(config.tracking.uri)
    assert sorted(by_number(kids)) == list(range(6))


@pytest.mark.slow  # starts several processes (workers, a driver, an MLflow server)
def test_driver_killed_mid_search_resumes_without_losing_or_repeating_a_trial(tmp_path, faults):
    """SIGKILL of `autocompress search` while trial 3 runs; the same command again: trial 3 ends FAIL "driver
    died", its params run again as a new trial, trials 0-2 are untouched, MLflow has one run per trial."""
    cfg = tmp_path / "search.yaml"
    cfg.write_text(json.dumps(config_dict(tmp_path)))
    config = SearchConfig.from_yaml(cfg)
    cmd = [sys.executable, "-m", "autocompress", "search", str(cfg), "--quiet", "--json"]
    folder = faults("3:wait")
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        script = Script(folder, [("3.0", kill)])
        script.run()  # in this thread: wait for trial 3 to hang, then SIGKILL the driver
        assert script.error is None, script.error
        assert script.pids["3.0"] == first.pid  # the local backend runs trials in the driver process
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    before = {t.number: t for t in trials_of(config)}
    assert [before[n].state.name for n in range(4)] == ["COMPLETE"] * 3 + ["RUNNING"]
    # a half-written child run, as a driver killed inside log_trial leaves it
    parents, _ = mlflow_runs(config.tracking.uri)
    client = MlflowClient(tracking_uri=config.tracking.uri)
    client.create_run(parents[0].info.experiment_id, run_name="trial-0002", tags={
        "mlflow.parentRunId": parents[0].info.run_id, "autocompress.trial_number": "2"})

    env = {k: v for k, v in os.environ.items() if k != "AUTOCOMPRESS_TEST_FAULTS"}
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["counts"] == {"COMPLETE": 6, "FAIL": 1}
    trials = trials_of(config)
    dead = trials[3]
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 3]
    print(f"\ntrial 3: {dead.state.name} {dead.user_attrs['error']!r}; re-run as trial {retry[0].number}")
    assert dead.state.name == "FAIL" and dead.user_attrs["error"].startswith("driver died (")
    assert "on this host is gone" in dead.user_attrs["error"] and "queued again" in dead.user_attrs["error"]
    assert len(retry) == 1 and retry[0].params == dead.params and retry[0].state.name == "COMPLETE"
    for n in range(3):  # finished trials are never run again
        assert (trials[n].values, trials[n].datetime_complete) == (before[n].values, before[n].datetime_complete)
    assert len(trials) == 7 and not [t for t in trials if not t.state.is_finished()]
    parents, kids = mlflow_runs(config.tracking.uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    logged = by_number(kids)
    assert sorted(logged) == list(range(7)) and all(len(v) == 1 for v in logged.values())
    assert not [k for k in kids if k.info.status == "RUNNING"]
    assert logged[3][0].info.status == "FAILED" and "driver died" in logged[3][0].data.tags["autocompress.error"]


def test_ctrl_c_fails_the_running_trial_and_the_next_run_runs_its_params_again(tmp_path, faults):
    faults("2:interrupt")  # Ctrl-C while trial 2 runs in the driver process (local backend)
    config = make_config(tmp_path, budget={"n_trials": 4})
    with pytest.raises(KeyboardInterrupt):
        run_search(config, show_progress=False)
    stopped = trials_of(config)[2]
    assert stopped.state.name == "FAIL"
    assert stopped.user_attrs["error"] == "driver stopped (KeyboardInterrupt); its params are queued again"
    parents, _ = mlflow_runs(config.tracking.uri)
    assert parents[0].info.status == "KILLED"
    faults(None)
    result = run_search(config, show_progress=False)
    retry = [t for t in trials_of(config) if t.system_attrs.get("failed_trial") == 2]
    assert len(retry) == 1 and retry[0].params == stopped.params and retry[0].state.name == "COMPLETE"
    assert result.counts == {"COMPLETE": 4, "FAIL": 1}
    parents, kids = mlflow_runs(config.tracking.uri)
    assert parents[0].info.status == "FINISHED" and sorted(by_number(kids)) == list(range(5))


def test_a_silent_driver_on_another_host_loses_its_trials_a_beating_one_keeps_them(tmp_path):
    """Heartbeats on a shared RDB study: a RUNNING trial whose driver (on another host) stopped beating more
    than 3 x heartbeat_s ago ends FAIL and is re-run with its params; one whose driver still beats is left
    alone, RUNNING."""
    from autocompress.loading import load_model
    from autocompress.spaces import ConfigSpace

    config = make_config(tmp_path, budget={"n_trials": 3}, backend={"heartbeat_s": 1},
                         sampler={"name": "random", "seed": 0, "enqueue_uniform": False})
    Path(config.run_dir).mkdir(parents=True)
    with warnings.catch_warnings():  # heartbeats are experimental, and meant for study.optimize
        warnings.simplefilter("ignore")
        storage = optuna.storages.RDBStorage(config.storage, heartbeat_interval=1)
        study = optuna.create_study(storage=storage, study_name=config.study_name,
                                    directions=["maximize", "minimize"])
        live, silent = study.ask(), study.ask()
    space = ConfigSpace(config.space, load_model("random:bert").info)
    for trial, driver in ((live, "otherhost:1:1"), (silent, "otherhost:2:2")):
        space.sample(trial)
        trial.set_user_attr("driver", driver)
        storage.record_heartbeat(trial._trial_id)
    stop = threading.Event()

    def beat() -> None:  # the live driver on the other host
        while not stop.wait(0.25):
            storage.record_heartbeat(live._trial_id)

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        time.sleep(3 * 1 + 1.5)  # the silent driver's grace period (3 x heartbeat_s) runs out
        result = run_search(config, show_progress=False)
    finally:
        stop.set()
        beater.join()
    trials = {t.number: t for t in trials_of(config)}
    failed, kept = trials[silent.number], trials[live.number]
    print(f"\nsilent driver's trial: {failed.state.name} {failed.user_attrs['error']!r}")
    assert failed.state.name == "FAIL"
    assert failed.user_attrs["error"].startswith("driver died (otherhost:2:2: no heartbeat for more than 3 s)")
    assert kept.state.name == "RUNNING" and "error" not in kept.user_attrs
    retry = [t for t in trials.values() if t.system_attrs.get("failed_trial") == silent.number]
    assert len(retry) == 1 and retry[0].params == failed.params and retry[0].state.name == "COMPLETE"
    assert result.counts == {"COMPLETE": 3, "FAIL": 1, "RUNNING": 1}


def test_dead_driver_on_this_host_is_found_without_heartbeats_on_a_journal_storage(tmp_path):
    """Journal storages have no heartbeats: a trial whose driver process on this host is gone is failed and
    queued again, once (max_retries=1); the second time it stays FAIL."""
    import socket

    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from autocompress.search.liveness import Liveness

    gone_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(tmp_path / "study.log"))))
    liveness = Liveness(study, heartbeat_s=10, max_retries=1)
    assert not liveness.heartbeats
    trial = study.ask()
    trial.suggest_categorical("bits", [4, 8])
    for attempt in range(2):
        trial.set_user_attr("driver", f"{socket.gethostname()}:{gone_pid}:1")
        failed = liveness.recover()
        assert [t.number for t in failed] == [trial.number] and failed[0].state.name == "FAIL"
        waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
        if attempt == 0:
            assert "its params are queued again" in failed[0].user_attrs["error"]
            assert len(waiting) == 1 and waiting[0].params == failed[0].params
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trial = study.ask()  # the retry, taken by a driver that dies too
        else:
            assert "not queued again (backend.max_retries=1 reached)" in failed[0].user_attrs["error"]
            assert waiting == []
    assert liveness.recover() == []


def start_mlflow(tmp: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port with its store in tmp (the same store on every restart)."""
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]
    cmd += ["server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db", "--artifacts-destination", str(tmp / "artifacts")]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(tmp / "server.log", "ab") as log:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"mlflow server did not start: {(tmp / 'server.log').read_text()[-2000:]}")
        time.sleep(0.25)


def stop_mlflow(proc: subprocess.Popen) -> None:
    """SIGKILL the server and its uvicorn worker (its process group): MLflow gone without a goodbye."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.slow  # starts several processes (workers, a driver, an MLflow server)
def test_mlflow_going_away_mid_search_never_stops_it_and_nothing_is_lost(tmp_path, faults):
    tmp = tmp_path / "mlflow"
    tmp.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = [start_mlflow(tmp, port)]

    def restart(_pid: int) -> None:
        server[0] = start_mlflow(tmp, port)

    try:
        # 1. the server dies while trial 0 runs and comes back while trial 2 runs
        folder = faults("0:wait,2:wait,3:wait")
        config = make_config(tmp_path, tracking={"uri": uri, "retry_s": 0, "timeout_s": 5})
        seen: dict[str, list] = {}

        def check(_pid: int) -> None:  # trial 3 has started (and waits): the writer logs trials 0-2 meanwhile
            deadline = time.monotonic() + 60
            while True:
                seen["before_end"] = sorted(by_number(mlflow_runs(uri)[1]))
                if seen["before_end"] == [0, 1, 2] or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            script.go(3)

        script = Script(folder, [("0.0", lambda pid: (stop_mlflow(server[0]), script.go(0))),
                                 ("2.0", lambda pid: (restart(pid), script.go(2))), ("3.0", check)])
        script.start()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = run_search(config, show_progress=False)
        script.join()
        assert script.error is None, script.error
        failed = [str(w.message) for w in caught if "MLflow logging failed" in str(w.message)]
        print(f"\nwarned {len(failed)} time(s): {failed[0][:160]}...; in MLflow when trial 3 started: "
              f"{seen['before_end']}")
        assert len(failed) == 1 and not [w for w in caught if "still unreachable" in str(w.message)]
        assert seen["before_end"] == [0, 1, 2]  # flushed when the server came back, not only at the end
        assert result.counts == {"COMPLETE": 6} and result.untracked == []
        parents, kids = mlflow_runs(uri)
        logged = by_number(kids)
        assert sorted(logged) == list(range(6)) and all(len(v) == 1 for v in logged.values())
        assert parents[0].info.status == "FINISHED" and not [k for k in kids if k.info.status == "RUNNING"]

        # 2. the server dies for good while trial 1 of another study runs: the search still finishes
        faults("1:wait")
        for f in folder.iterdir():
            f.unlink()
        other = make_config(tmp_path, tracking={"uri": uri, "retry_s": 0, "timeout_s": 5}, budget={"n_trials": 3},
                            study_name="gone", run_dir=str(tmp_path / "gone"))
        def kill_when_0_is_logged(_pid: int) -> None:  # the writer thread logs trial 0 while trial 1 waits
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                kids = mlflow_runs(uri, study="gone")[1]
                if [k.info.status for k in kids] == ["FINISHED"]:
                    break
                time.sleep(0.5)
            stop_mlflow(server[0])
            script.go(1)

        script = Script(folder, [("1.0", kill_when_0_is_logged)])
        script.start()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = run_search(other, show_progress=False)
        script.join()
        assert script.error is None, script.error
        still = [str(w.message) for w in caught if "still unreachable" in str(w.message)]
        print(f"at the end: {still[0]}")
        # trial 0's run was complete when the server died; the writer's last request for it (the check that
        # no other writer logged it too) may have been under way then, so 0 may be untracked as well
        assert result.counts == {"COMPLETE": 3} and result.untracked in ([1, 2], [0, 1, 2])
        numbers = ", ".join(map(str, result.untracked))
        assert len(still) == 1 and f"{len(result.untracked)} finished trial(s) ({numbers}) are only" in still[0]

        # 3. back again: the same command logs what only the Optuna storage had
        restart(0)
        faults(None)
        assert run_search(other, show_progress=False).untracked == []
        parents, kids = mlflow_runs(uri, study="gone")
        logged = by_number(kids)
        assert sorted(logged) == [0, 1, 2] and all(len(v) == 1 for v in logged.values())
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    finally:
        stop_mlflow(server[0])


def test_a_hung_mlflow_server_costs_one_request_per_retry_interval(tmp_path):
    """A server that accepts connections and never answers: the first trial's logging gives up after
    tracking.timeout_s, the next trials are kept without a request (retry_s not over), `finish` tries once."""
    import socket

    from autocompress.search.tracking.recorder import TrialRecord, TrialRecorder
    from autocompress.search.tracking.runs import Tracker

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)  # the kernel completes the handshakes; nobody reads
    hole.setblocking(False)
    uri = f"http://127.0.0.1:{hole.getsockname()[1]}"

    def connections() -> int:
        n = 0
        while True:
            try:
                conn, _ = hole.accept()
            except BlockingIOError:
                return n
            conn.close()
            n += 1

    recorder = TrialRecorder(Tracker(MlflowClient(tracking_uri=uri), uri, "0", "parent"), "sqlite:///o.db",
                             timeout_s=1, retry_s=3600, background=False)  # the policy, step by step
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            made = []
            for n in range(3):
                recorder.record(TrialRecord(n, "COMPLETE", {"layer.bits": 4}, {"fidelity": 0.9}, 1.0, "w", None))
                made.append(connections())
            assert made == [1, 0, 0] and recorder.untracked == [0, 1, 2]
            assert recorder.finish() == [0, 1, 2] and connections() == 1
            assert not recorder.call("close", "FINISHED") and connections() == 0  # known down: not tried
        messages = [str(w.message) for w in caught]
        assert sum("MLflow logging failed" in m for m in messages) == 1
        assert sum("3 finished trial(s) (0, 1, 2) are only in the Optuna storage" in m for m in messages) == 1
    finally:
        hole.close()


def test_the_same_trial_logged_by_two_writers_keeps_one_run(tmp_path):
    """Two drivers logging one trial at once (a resumed driver reconciling while a live one logs) leave one
    run: the later writer deletes its own."""
    from autocompress.search.tracking.runs import Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    a = Tracker.open(uri, "autocompress", "faults", "sqlite:///x.db", {}, "run")
    b = Tracker.open(uri, "autocompress", "faults", "sqlite:///x.db", {}, "run")
    assert a.parent_run_id == b.parent_run_id
    for tracker in (a, b, a):
        tracker.log_trial(5, "COMPLETE", {"layer.bits": 4}, {"fidelity": 0.9}, 1.0, "w", None)
    _, kids = mlflow_runs(uri)
    assert len(kids) == 1 and kids[0].data.metrics["fidelity"] == 0.9


def test_fault_keys_are_validated():
    base = {"model": {"name": "random:bert"}, "space": SPACE}
    cfg = SearchConfig.from_dict({**base, "budget": {"trial_timeout_s": 30}, "backend": {"max_retries": 2,
                                  "heartbeat_s": 5}, "tracking": {"timeout_s": 3, "retry_s": 0}})
    assert (cfg.budget.trial_timeout_s, cfg.backend.max_retries, cfg.tracking.retry_s) == (30, 2, 0)
    for bad, where in (({"budget": {"trial_timeout_s": 0}}, "budget.trial_timeout_s"),
                       ({"backend": {"max_retries": -1}}, "backend.max_retries"),
                       ({"backend": {"heartbeat_s": 0}}, "backend.heartbeat_s"),
                       ({"tracking": {"timeout_s": 0}}, "tracking.timeout_s"),
                       ({"backend": {"max_retry": 1}}, "did you mean 'max_retries'")):
        with pytest.raises(UserError, match=where.replace(".", r"\.")):
            SearchConfig.from_dict({**base, **bad})
