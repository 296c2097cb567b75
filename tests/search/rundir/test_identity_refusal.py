"""A run directory knows what it searched: `search` (resume), `export` and `report` refuse, with exit 2 and
one line naming the difference and writing nothing, a config.yaml that names another model than the study's;
a study made before identities were recorded is read as it is."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
import yaml

from autocompress.cli import main
from autocompress.errors import UserError
from autocompress.search.driver import run_search
from autocompress.search.rundir.identity import ATTR, run_identity
from autocompress.search.rundir.reader import RunDir
from tests.support import make_config, stored_trials

MESSAGE = ("error: the run searched random:bert (task embedding); config.yaml now names all-MiniLM-L6-v2: "
           "restore config.yaml or start a new run_dir")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("identity")
    config = make_config(tmp, budget={"n_trials": 3}, tracking={"uri": "none"},
                         space={"quantize": {"bits": [4, 8]}})
    run_search(config, show_progress=False)
    return tmp, config


def _files(run) -> list[str]:
    """The run directory's entries, less SQLite's -wal / -shm files (they come and go with open connections:
    copied from a study this process still has open, removed when the refused command closes its own)."""
    return sorted(p.name for p in run.iterdir() if not p.name.endswith(("-wal", "-shm")))


def _copy(finished, tmp_path, model: str | None = None):
    """A copy of the finished run directory with its own optuna.db; config.yaml naming `model` when given."""
    src, _ = finished
    run = shutil.copytree(src / "run", tmp_path / "run")
    data = yaml.safe_load((run / "config.yaml").read_text())
    data["storage"] = f"sqlite:///{run / 'optuna.db'}"
    if model:
        data["model"]["name"] = model
    (run / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return run


def test_the_study_records_what_was_searched(finished):
    tmp, config = finished
    run = RunDir.open(tmp / "run")
    assert run.study.user_attrs[ATTR] == run_identity(config)


@pytest.mark.parametrize("command", ["export", "report"])
def test_export_and_report_refuse_another_model(finished, tmp_path, capsys, command):
    run = _copy(finished, tmp_path, model="all-MiniLM-L6-v2")
    before = _files(run)
    argv = [command, str(run), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == MESSAGE, err
    assert not (tmp_path / "out").exists() and _files(run) == before


def _other_bert(path) -> str:
    """A BERT directory of random:bert's shape and task with other weights."""
    from autocompress.loading import load_model

    load_model("random:bert", seed=1).model.save_pretrained(path)
    return str(path)


def test_resume_refuses_another_model_before_writing(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    config_yaml = (run / "config.yaml").read_text()
    data = yaml.safe_load(config_yaml)
    data["model"]["name"] = other = _other_bert(tmp_path / "other")
    data["budget"]["n_trials"] = 5
    search_yaml = tmp_path / "search.yaml"
    search_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    trials = len(stored_trials(RunDir.open(run).config))
    assert main(["search", str(search_yaml), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == MESSAGE.replace("config.yaml", "the config").replace("all-MiniLM-L6-v2", other), err
    assert (run / "config.yaml").read_text() == config_yaml  # not rewritten before the refusal
    assert len(stored_trials(RunDir.open(run).config)) == trials


def test_a_study_from_before_identities_is_read_as_it_is(finished, tmp_path):
    run = _copy(finished, tmp_path, model="all-MiniLM-L6-v2")
    with sqlite3.connect(run / "optuna.db") as db:
        db.execute("DELETE FROM study_user_attributes WHERE key = ?", (ATTR,))
    assert ATTR not in RunDir.open(run).study.user_attrs  # no identity: nothing to compare with


def test_the_same_run_resumes(finished, tmp_path):
    run = _copy(finished, tmp_path)
    config = RunDir.open(run).config.model_copy(update={"budget": make_config(tmp_path).budget.model_copy(
        update={"n_trials": 4})})
    run_search(config, show_progress=False)
    assert len(stored_trials(config)) >= 4
    other = _other_bert(tmp_path / "other")
    with pytest.raises(UserError, match=f"now names {other}"):
        run_search(config.model_copy(update={"model": config.model.model_copy(update={"name": other})}),
                   show_progress=False)
