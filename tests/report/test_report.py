"""`write_report` end to end on real run directories: the files, their content, the pick, the errors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from autocompress.errors import UserError
from autocompress.report import ReportFiles, write_report
from autocompress.search.rundir.reader import RunDir
from autocompress.search.seeding.sensitivity import Sensitivity as Measured
from autocompress.search.study import open_study
from tests.report.conftest import make_config


def dominates(objectives, a, b) -> bool:
    """Independent of the report: a is no worse on every objective and better on one."""
    sign = [-1 if d == "maximize" else 1 for d, _ in objectives]
    pa = [s * v for s, v in zip(sign, a.values)]
    pb = [s * v for s, v in zip(sign, b.values)]
    return all(x <= y for x, y in zip(pa, pb)) and pa != pb


def table_rows(md: str, heading: str) -> list[list[str]]:
    section = md.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in r] for r in rows[1:]]  # without the header


def test_two_objective_report(study2, tmp_path):
    files = write_report(study2, out_dir=tmp_path / "out")
    assert isinstance(files, ReportFiles) and files.out_dir == tmp_path / "out"
    assert sorted(p.name for p in files.paths()) == ["pareto.md", "pareto.png", "plan.png", "report.html"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in files.paths())
    assert files.sensitivity_png is None  # no sensitivity.json in this run directory

    run = RunDir.open(study2)
    md = files.pareto_md.read_text()
    front = table_rows(md, "Feasible Pareto front")
    assert sorted(int(r[0].split()[0]) for r in front) == run.front_numbers()
    assert "fidelity (cosine to the original, 1 = same)" in md and "size_mb (MB)" in md
    assert files.picked == run.choose().number and f"{files.picked} (picked)" in md
    baselines = table_rows(md, "Baselines")
    assert sorted(r[0] for r in baselines) == sorted(t.user_attrs["baseline"] for t in run.baselines())
    by_number = {t.number: t for t in run.completed()}
    front_trials = run.front()
    for row in baselines:
        base = by_number[int(row[1])]
        beaten = [f.number for f in front_trials if dominates(run.objectives, f, base)]
        assert row[-2] == ("yes" if all(v <= 0 for v in base.constraints.values()) else "no")
        if base.number in run.front_numbers():
            assert row[-1] == "no: it is on the front"
        elif beaten:
            assert row[-1] == "yes: trial " + ", ".join(map(str, beaten))
        else:
            assert row[-1] == "no"
    assert any(r[-2] == "no" for r in baselines), "the 2-bit baseline breaks fidelity >= 0.9995"
    assert "![pareto.png](pareto.png)" in md

    for png in (files.pareto_png, files.plan_png):
        with Image.open(png) as im:
            assert im.width >= 800 and im.height >= 600
            assert round(im.info["dpi"][0]) == 150


def test_html_is_self_contained(study3, tmp_path):
    files = write_report(study3, out_dir=tmp_path)
    page = files.html.read_text()
    assert page.count("plotly.js v") == 1  # the library embedded once, for every figure
    assert not re.search(r"<script[^>]+src=", page) and "cdn.plot.ly/plotly" not in page
    assert page.count('class="plotly-graph-div"') >= 5  # front, 3 histories, plan heat map (+ importances)
    assert "latency (ms, predicted, cpu-local, batch 1, seq 128)" in page
    assert "<table>" in page and "<h3>Baselines</h3>" in page
    assert '\\"params\\"' not in page  # Optuna's JSON hover text is replaced by a short one
    assert "scatter3d" in page  # three objectives: Optuna's 3-D front


def test_default_out_dir_pick_rule_trial_and_sensitivity(study2, tmp_path):
    run_copy = tmp_path / "run"
    shutil.copytree(study2, run_copy)
    # written by the sensitivity analysis' own class (numbers made up: measuring costs a search's worth)
    Measured(metric="fidelity", reference=0.99999, fingerprint="test", saved_bytes={},
             layers={"encoder.layer.1.output.dense": {"quantize bits=2": 0.01, "quantize bits=4": 0.001},
                     "encoder.layer.0.attention.self.qkv": {"quantize bits=2": 0.004, "lowrank rank=0.25": 0.02}},
             ).save(run_copy / "sensitivity.json")
    files = write_report(run_copy, pick="minimize size_mb")
    assert files.out_dir == run_copy.resolve() / "report" and files.pareto_md.is_file()
    run = RunDir.open(run_copy)
    size = {t.number: t.user_attrs["metrics"]["size_mb"] for t in run.front()}
    assert files.picked in size and size[files.picked] == min(size.values())  # ties: any of the smallest
    smallest = next(t for t in run.front() if t.number == files.picked)
    assert files.sensitivity_png is not None and files.sensitivity_png in files.paths()
    assert "![sensitivity.png](sensitivity.png)" in files.pareto_md.read_text()
    assert "Per-layer sensitivity" in files.html.read_text()
    other = next(t.number for t in run.completed() if t.number != smallest.number)
    (run_copy / "sensitivity.json").write_text('{"layers": {"x": {"bits=2": "high"}}}')
    with pytest.raises(UserError, match=r"sensitivity\.json.*not a finite number"):
        write_report(run_copy, out_dir=tmp_path / "t", trial=other)
    assert not (tmp_path / "t").exists()  # every input is checked before anything is written
    (run_copy / "sensitivity.json").unlink()
    files = write_report(run_copy, trial=other)  # into the same folder: the old sensitivity.png goes
    assert files.picked == other and files.sensitivity_png is None
    assert not (files.out_dir / "sensitivity.png").exists()
    assert f"Plan of trial {other} " in files.html.read_text()


def test_config_pick_matching_nothing_leaves_a_note(study2, tmp_path):
    run_copy = tmp_path / "run"
    shutil.copytree(study2, run_copy)
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    config["pick"] = "minimize size_mb where fidelity >= 2"
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config))
    files = write_report(run_copy, out_dir=tmp_path / "out")  # the config's rule failing is no error
    assert files.picked is None and files.plan_png is None
    assert sorted(p.name for p in files.paths()) == ["pareto.md", "pareto.png", "report.html"]
    assert "No trial is picked: pick rule" in files.pareto_md.read_text()


def test_errors_are_one_line_user_errors(study2, tmp_path):
    with pytest.raises(UserError, match="matches no feasible Pareto trial"):
        write_report(study2, out_dir=tmp_path / "a", pick="minimize size_mb where fidelity >= 2")
    with pytest.raises(UserError, match="--trial 999"):
        write_report(study2, out_dir=tmp_path / "b", trial=999)
    with pytest.raises(UserError, match="not a run directory"):
        write_report(tmp_path, out_dir=tmp_path / "c")


def test_run_dir_without_a_complete_trial(tmp_path):
    config = make_config(tmp_path, "empty")
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    open_study(config)  # the study exists, with no trial in it
    with pytest.raises(UserError, match="no finished trial.*autocompress search"):
        write_report(run_dir)
    assert not (run_dir / "report").exists()
