"""Reading a run directory back: trials, front, baselines, the pick, the bad-input cases of export, and `ui`
serving a run."""

from __future__ import annotations

import pytest

from autocompress.cli import main
from autocompress.errors import UserError
from autocompress.search.driver import run_search
from autocompress.search.rundir.reader import RunDir
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


@pytest.mark.parametrize("rule, missing", [("minimize latency_ms", "latency_ms"),
                                           ("minimize size_mb where perplexity <= 20", "perplexity")])
def test_a_pick_rule_on_a_metric_the_study_did_not_measure_says_so(finished_run, rule, missing):
    path, _ = finished_run
    with pytest.raises(UserError) as info:
        RunDir.open(path).choose(pick=rule)
    assert str(info.value) == (f"pick rule {rule!r}: this study did not measure {missing!r}; it measured "
                               "fidelity, fidelity_min, size_mb, size_ratio, topk_agreement; pick by one of those")


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
        (["export", str(path), "--out", str(tmp_path / "o"), "--pick", "minimize latency_ms"],
         "this study did not measure 'latency_ms'"),
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


def _answer(url: str, data: bytes | None = None, seconds: float = 180) -> bytes:
    """The body of `url` once it answers (POSTing `data` as JSON when given); fails after `seconds`."""
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while True:
        try:
            request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
            return urllib.request.urlopen(request, timeout=2).read()
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"{url} did not answer within {seconds:g} s")
            time.sleep(0.5)


def test_ui_serves_mlflow_and_optuna_dashboard_on_localhost(tmp_path):
    """`ui` serves the MLflow UI on the run's tracking store and, beside it, optuna-dashboard on the study's
    own Optuna storage (where each binds: tests/test_security.py)."""
    import subprocess
    import sys

    from tests.search.conftest import free_port
    from tests.support import stop_process_group

    config = make_config(tmp_path, budget={"n_trials": 1})
    run_search(config, show_progress=False)
    port, dash = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "autocompress", "ui", str(tmp_path / "run"), "--port", str(port),
                             "--dashboard-port", str(dash)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        experiments = _answer(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search", b'{"max_results": 5}')
        assert b"autocompress" in experiments  # the experiment this run logged to
        assert b"tiny" in _answer(f"http://127.0.0.1:{dash}/api/studies")  # the study of this run directory
    finally:
        stop_process_group(proc)
