"""A run directory's plan files (search/rundir/plan_files.py): one that is missing or does not parse is rebuilt from
its trial's parameters in the study, equal to the plan the trial ran, by `RunDir.plan` (export, report) and
by a resume; one that cannot be rebuilt is refused with the file named."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from autocompress.cli import main
from autocompress.errors import UserError
from autocompress.search.driver import run_search
from autocompress.search.rundir.reader import RunDir
from tests.support import make_config

CORRUPT = {"truncated": '{"autocompress_plan": 1, "layers": {"encoder.layer.0', "empty": "",
           "not-a-plan": '{"layers": 3}', "not-utf8": b"\xff\xfe\xfa"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plans")
    config = make_config(tmp, budget={"n_trials": 5}, tracking={"uri": "none"}, sampler={"seed": 3},
                         space={"quantize": {"bits": [4, 8, None], "method": ["rtn", "gptq"]},
                                "structured": {"sparsity": [0.0, 0.25]}})
    run_search(config, show_progress=False)
    return tmp / "run"


def _copy(finished, tmp_path):
    """A copy of the run directory with its own optuna.db, and its plans as the search wrote them."""
    run = shutil.copytree(finished, tmp_path / "run")
    data = yaml.safe_load((run / "config.yaml").read_text())
    data["storage"], data["run_dir"] = f"sqlite:///{run / 'optuna.db'}", str(run)
    (run / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return run, {p.name: p.read_text() for p in (run / "plans").iterdir()}


def _spoil(path, how: str) -> None:
    if how == "missing":
        path.unlink()
    else:
        data = CORRUPT[how]
        path.write_bytes(data if isinstance(data, bytes) else data.encode())


@pytest.mark.parametrize("how", ["missing", *CORRUPT])
def test_run_dir_plan_rebuilds_every_trials_plan(finished, tmp_path, capsys, how):
    run, original = _copy(finished, tmp_path)
    opened = RunDir.open(run)
    assert len(original) == len(opened.trials) >= 5
    for name in original:
        _spoil(run / "plans" / name, how)
    for t in opened.trials:
        name = f"trial-{t.number:04d}.json"
        plan = opened.plan(t.number)
        assert plan.to_json() + "\n" == original[name]  # the plan the trial ran
        assert (run / "plans" / name).read_text() == original[name]  # written back
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and name in err[0] and "rebuilt" in err[0], err
    assert opened.plan(0).to_json() + "\n" == original["trial-0000.json"] and not capsys.readouterr().err


def test_a_plan_that_cannot_be_rebuilt_is_refused_with_its_file_named(finished, tmp_path, monkeypatch):
    run, _ = _copy(finished, tmp_path)
    opened = RunDir.open(run)
    _spoil(run / "plans" / "trial-0001.json", "truncated")

    def no_model(*args, **kwargs):
        raise UserError("model 'x' does not exist")

    monkeypatch.setattr("autocompress.loading.meta_inventory", no_model)
    with pytest.raises(UserError, match=r"trial-0001.json is not valid JSON.*cannot be rebuilt.*does not exist"):
        opened.plan(1)


def test_a_resume_rebuilds_a_corrupt_plan_and_export_and_report_work(finished, tmp_path, capsys):
    run, original = _copy(finished, tmp_path)
    picked = RunDir.open(run).choose().number
    name = f"trial-{picked:04d}.json"
    _spoil(run / "plans" / name, "truncated")
    (run / "plans" / "trial-0000.json").unlink()
    result = run_search(RunDir.open(run).config, show_progress=False)  # the same budget: no new trial
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and name in err[0] and "trial-0000.json" in err[0] and "rebuilt" in err[0], err
    assert json.loads((run / "summary.json").read_text())["picked"]["plan_path"] == result.picked.plan_path
    assert (run / "plans" / name).read_text() == original[name]
    assert (run / "plans" / "trial-0000.json").read_text() == original["trial-0000.json"]
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    assert json.loads((tmp_path / "export" / "plan.json").read_text()) == json.loads(original[name])
