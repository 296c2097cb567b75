"""Reading a run directory back: trials, front, baselines, the pick, and the bad-input cases of export."""

from __future__ import annotations

import pytest

from autocompress.cli import main
from autocompress.errors import UserError
from autocompress.search.driver import run_search
from autocompress.search.rundir import RunDir
from tests.support import make_config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rundir")
    config = make_config(tmp, budget={"n_trials": 6}, tracking={"uri": "none"},
                         constraints=["fidelity >= 0.5"])
    result = run_search(config, show_progress=False)
    return tmp / "run", result


def test_open_reads_the_study_back(finished_run):
    path, result = finished_run
    run = RunDir.open(path)
    assert run.config.study_name == result.study_name and run.objectives == [("maximize", "fidelity"),
                                                                              ("minimize", "size_mb")]
    assert [t.number for t in run.front()] == [p.number for p in result.pareto]
    assert {t.user_attrs["baseline"] for t in run.baselines()} >= {"quantize bits=8"}
    assert all(run.is_feasible(t) for t in run.front())
    assert run.choose().number == result.picked.number  # the config's own rule, as the search chose
    assert run.plan(result.picked.number).to_dict() == run.plan(result.picked.number).to_dict()


def test_choose_by_number_and_rule(finished_run):
    path, _ = finished_run
    run = RunDir.open(path)
    smallest = min(run.front(), key=lambda t: t.user_attrs["metrics"]["size_mb"])
    assert run.choose(pick="minimize size_mb").number == smallest.number
    assert run.choose(trial=0).number == 0
    with pytest.raises(UserError, match="matches no feasible Pareto trial.*fidelity"):
        run.choose(pick="minimize size_mb where fidelity >= 1.5")
    with pytest.raises(UserError, match="--trial 99"):
        run.choose(trial=99)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        RunDir.open(tmp_path / "nope")
    with pytest.raises(UserError, match="no config.yaml"):
        RunDir.open(tmp_path)


def test_export_bad_input_exits_2_with_one_line(finished_run, tmp_path, capsys):
    path, _ = finished_run
    cases = [
        (["export", str(tmp_path), "--out", str(tmp_path / "o")], "no config.yaml"),
        (["export", str(path), "--out", str(tmp_path / "o"), "--pick", "minimize size_mb where fidelity > 2"],
         "matches no feasible Pareto trial"),
        (["export", str(path), "--out", str(tmp_path / "o"), "--trial", "1", "--pick", "minimize size_mb"],
         "not both"),
    ]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    cases.append((["export", str(path), "--out", str(tmp_path / "taken")], "--force"))
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expected in err and len(err.splitlines()) == 1, err
    assert (tmp_path / "taken" / "x").read_text() == "keep me"  # nothing replaced without --force


def test_export_refuses_a_run_with_no_finished_trial(tmp_path, capsys):
    config = make_config(tmp_path, budget={"n_trials": 2}, tracking={"uri": "none"},
                         objectives=["maximize fidelity", "minimize size_mb"],
                         space={"quantize": {"bits": [2]}}, constraints=["size_mb <= 0.0001"])
    run_search(config, show_progress=False)  # every plan breaks the size bound: PRUNED before model work
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no finished trial (PRUNED)" in err and "autocompress search" in err
    assert not (tmp_path / "o").exists()


def test_ui_starts_optuna_dashboard_on_localhost(finished_run, tmp_path):
    """`ui` serves the MLflow UI and, beside it, optuna-dashboard on the study's own Optuna storage."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.search.conftest import free_port

    config = make_config(tmp_path, budget={"n_trials": 1})
    run_search(config, show_progress=False)
    port, dash = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "autocompress", "ui", str(tmp_path / "run"), "--port", str(port),
                             "--dashboard-port", str(dash)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/studies", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("optuna-dashboard did not answer within 60 s")
                time.sleep(0.5)
        assert b"tiny" in body  # the study of this run directory
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
