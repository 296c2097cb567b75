"""one_transaction: the same rows as Optuna's one-commit-per-write path, written in one commit on an RDB
storage (SQLite, PostgreSQL), replayed call by call on the others; nothing lost on an exception."""

from __future__ import annotations

import optuna
import pytest
from sqlalchemy import event

from autocompress.search import trial_writes
from autocompress.search.storage import open_storage
from autocompress.search.trial_writes import one_transaction
from tests.search.services import delete_studies, postgres_url, unique_name  # noqa: F401

DIST = [2, 3, 4, 8]


@pytest.fixture(params=("sqlite", "postgresql", "journal", "memory"))
def storage(request, tmp_path):
    """(storage, its study name) of each kind; PostgreSQL skips when the server cannot be reached."""
    kind, name = request.param, unique_name("writes")
    if kind == "memory":
        yield optuna.storages.InMemoryStorage(), name
        return
    url = {"sqlite": f"sqlite:///{tmp_path}/optuna.db", "journal": f"journal://{tmp_path}/optuna.log"}.get(kind) \
        or request.getfixturevalue("postgres_url")
    yield open_storage(url), name
    if kind == "postgresql":
        delete_studies(url, name)


def write_trial(trial: optuna.Trial, n_params: int = 12) -> None:
    """What the driver writes for a plan: categorical params, user attrs of several types, constraints."""
    for k in range(n_params):
        trial.suggest_categorical(f"unit{k}.bits", DIST)
    trial.suggest_float("rank", 0.1, 1.0)
    trial.set_user_attr("plan_summary", "quantize 4 bits x 12")
    trial.set_user_attr("metrics", {"fidelity": 0.97, "size_mb": 12.5})
    trial.set_user_attr("retry_reasons", ["worker died"])
    trial.set_constraint("fidelity >= 0.95", -0.02)
    trial.set_constraint("size_mb <= 20", -7.5)


def snapshot(t: optuna.trial.FrozenTrial) -> tuple:
    return t.params, t.distributions, t.user_attrs, t.system_attrs, t.constraints, t.state, t.values


def test_same_rows_as_one_write_per_call(storage):
    """A trial written in one block reads back exactly like one written call by call, in this process and in
    a fresh handle on the storage (what a resumed driver or another sweep process sees)."""
    storage, name = storage
    study = optuna.create_study(study_name=name, storage=storage, directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    plain = study.ask()
    write_trial(plain)
    study.tell(plain, [0.97, 12.5])
    held = study.ask()
    held.set_user_attr("metrics", "stale")  # written before the block: the block's value replaces it
    with one_transaction(held):
        write_trial(held)
        assert held.user_attrs["metrics"]["size_mb"] == 12.5  # reads through the trial see the held writes
        assert held.constraints == {"fidelity >= 0.95": -0.02, "size_mb <= 20": -7.5}
    held.set_user_attr("after", 1)  # the trial writes straight through again
    study.tell(held, [0.97, 12.5])
    a, b = study.get_trials()
    assert b.user_attrs.pop("after") == 1
    assert snapshot(a)[1:] == snapshot(b)[1:] and set(a.params) == set(b.params)
    assert b.params == held.params
    again = optuna.load_study(study_name=name, storage=storage).get_trials()[1]
    assert again.params == b.params and again.user_attrs == {**b.user_attrs, "after": 1}
    assert again.constraints == b.constraints == a.constraints


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_one_commit_on_rdb(kind, tmp_path, request):
    """On Optuna's RDBStorage the block's 50 params, 3 attributes and 2 constraints cost one commit, made when
    the block ends; the installed Optuna has the internals this needs (else the replay path would be taken
    silently and the driver lose the speed-up)."""
    assert trial_writes.optuna_internals() is not None
    url = f"sqlite:///{tmp_path}/optuna.db" if kind == "sqlite" else request.getfixturevalue("postgres_url")
    storage, name = open_storage(url), unique_name("commits")
    try:
        study = optuna.create_study(study_name=name, storage=storage, directions=["maximize"])
        first = study.ask()
        write_trial(first, n_params=50)  # the study knows every param name now
        study.tell(first, 1.0)
        log = []  # "w" for each write statement, "c" for each commit (reads commit too)
        engine = storage._backend.engine
        event.listen(engine, "commit", lambda conn: log.append("c"))
        event.listen(engine, "before_cursor_execute", lambda conn, cursor, statement, *args: log.append(
            "w" if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")) else "r"))
        trial = study.ask()
        log.clear()
        with one_transaction(trial):
            write_trial(trial, n_params=50)
            assert "w" not in log
        transactions_that_wrote = [t for t in "".join(log).split("c") if "w" in t]
        assert len(transactions_that_wrote) == 1
        assert len(study.get_trials()[1].params) == 51
    finally:
        if kind == "postgresql":
            delete_studies(url, name)


def test_exception_in_block_still_writes(storage):
    storage, name = storage
    study = optuna.create_study(study_name=name, storage=storage)
    trial = study.ask()
    with pytest.raises(RuntimeError, match="evaluation broke"):
        with one_transaction(trial):
            trial.suggest_categorical("unit0.bits", DIST)
            trial.set_user_attr("error", "evaluation broke")
            raise RuntimeError("evaluation broke")
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    t = study.get_trials()[0]
    assert "unit0.bits" in t.params and t.user_attrs == {"error": "evaluation broke"}


def test_incompatible_distribution_still_refused(tmp_path):
    """Optuna refuses a param whose distribution differs from the study's earlier one; held, the refusal
    comes when the block ends, and nothing of the block is written."""
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/optuna.db"))
    t0 = study.ask()
    t0.suggest_categorical("unit0.bits", DIST)
    study.tell(t0, 1.0)
    trial = study.ask()
    with pytest.raises(ValueError, match="CategoricalDistribution"):
        with one_transaction(trial):
            trial.set_user_attr("plan_summary", "x")
            trial.suggest_categorical("unit0.bits", [4, 8])
    assert study.get_trials()[1].params == {} and study.get_trials()[1].user_attrs == {}


def test_writes_of_other_trials_go_straight_through(tmp_path):
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/optuna.db"))
    other, trial = study.ask(), study.ask()
    with one_transaction(trial):
        trial.storage.set_trial_user_attr(other._trial_id, "seen", True)
        assert study.get_trials()[0].user_attrs == {"seen": True}
        trial.set_user_attr("held", True)
        assert study.get_trials()[1].user_attrs == {}
    assert study.get_trials()[1].user_attrs == {"held": True}
