"""A real two-node Ray cluster on this machine: `ray start --head` plus a second `ray start --address` with its
own resources (its own raylet, as a second machine would run), token-authenticated as Ray 2.60 secures
clusters; `autocompress search` with `backend.address` joins it from a fresh process, runs trials on both
nodes, and leaves the cluster running."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from tests.search.conftest import free_port

pytestmark = pytest.mark.slow


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # `ray start --block` takes its node's processes down with it
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_search_runs_on_both_nodes_of_a_two_node_cluster(tmp_path):
    ray_cli = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
    port, dash = free_port(), free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # Ray 2.60 secures clusters with a token
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    address = f"127.0.0.1:{port}"
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    head = subprocess.Popen([ray_cli, "start", "--head", "--port", str(port), "--temp-dir", temp,
                             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(dash), *common],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    worker = None

    def nodes_alive() -> int:
        proc = subprocess.run([ray_cli, "status", "--address", address], capture_output=True, text=True, env=env,
                              timeout=60)
        return proc.stdout.count(" node_") if proc.returncode == 0 else 0

    try:
        deadline = time.monotonic() + 120
        while nodes_alive() < 1:
            assert head.poll() is None and time.monotonic() < deadline, "ray start --head did not come up"
            time.sleep(1)
        worker = subprocess.Popen([ray_cli, "start", "--address", address, "--resources", '{"second_node": 1}',
                                   *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                  start_new_session=True)
        while nodes_alive() < 2:
            assert worker.poll() is None and time.monotonic() < deadline, "the second node did not join"
            time.sleep(1)
        cfg = tmp_path / "cluster.yaml"
        cfg.write_text(json.dumps({
            "model": {"name": "random:bert"}, "data": {"calibration": {"n": 8}, "evaluation": {"n": 16}},
            "space": {"quantize": {"bits": [2, 4, 8, None]}}, "budget": {"n_trials": 6},
            "tracking": {"uri": "none"}, "run_dir": str(tmp_path / "run"),
            "backend": {"name": "ray", "workers": 2, "cpus_per_trial": 1, "address": address}}))
        proc = subprocess.run([sys.executable, "-m", "autocompress", "search", str(cfg), "--json", "--quiet"],
                              capture_output=True, text=True, env=env, timeout=400)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout)["counts"] == {"COMPLETE": 6}
        # 2 actors of 1 CPU on 2 nodes of 1 CPU: one actor per node; Ray's state API says where each ran
        listing = subprocess.run([ray_cli, "list", "actors", "--address", f"http://127.0.0.1:{dash}", "--format",
                                  "json", "--detail", "--limit", "100"], capture_output=True, text=True, env=env,
                                 timeout=120)
        assert listing.returncode == 0, listing.stderr[-2000:]
        actors = [a for a in json.loads(listing.stdout) if "TrialActor" in a.get("class_name", "")]
        assert len({a["node_id"] for a in actors}) == 2, actors
        import optuna

        study = optuna.load_study(study_name="cluster", storage=f"sqlite:///{tmp_path}/run/optuna.db")
        pids = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in study.trials if t.user_attrs.get("worker") != "cache"}
        assert pids <= {str(a["pid"]) for a in actors} and len(pids) == 2  # trials ran in both actors
        assert nodes_alive() == 2  # joined, not owned: the search leaves the cluster running
    finally:
        if worker is not None:
            _stop(worker)
        _stop(head)
        shutil.rmtree(temp, ignore_errors=True)
