"""benchmarks/readme_results.py: the results tables of README.md and docs/benchmarks.md are what
benchmarks/results/ says."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks import readme_results as rr


def test_readme_and_benchmarks_doc_tables_match_the_results_files():
    for path, begin, end, make in rr.GENERATED:
        text = path.read_text()
        assert begin in text and end in text, path
        assert rr.replace_block(text, make(), begin, end) == text, "run: python benchmarks/readme_results.py --write"
    assert {path.name for path, *_ in rr.GENERATED} == {"README.md", "benchmarks.md"}


def test_the_readme_holds_every_row_with_a_target_and_no_other():
    full, targets = rr.table().splitlines(), rr.targets_table().splitlines()
    assert targets[:2] == full[:2]
    with_target = [line for line in full[2:] if "| reported |" not in line]
    assert targets[2:] == with_target and with_target
    assert len(targets) < len(full)  # the "reported" rows are only in docs/benchmarks.md


def test_every_row_names_a_results_file_that_exists_or_says_not_measured():
    for line in rr.table().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        source = cells[-1].strip("`")
        assert (rr.RESULTS / source).is_file() or cells[3] == "not measured", line


def test_a_changed_figure_changes_the_table_and_its_verdict(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(rr.RESULTS, results)
    data = json.loads((results / "orchestration.json").read_text())
    local = next(r for r in data["real"] if r["backend"] == "local" and r["storage"] == "sqlite"
                 and r["writer"] == "thread")
    local["overhead_share"] = 0.071
    (results / "orchestration.json").write_text(json.dumps(data))
    row = next(line for line in rr.table(results).splitlines() if "local backend" in line)
    assert "7.1%" in row and "| not met |" in row
    assert rr.table(results) != rr.table()


def test_missing_files_give_not_measured_rows(tmp_path):
    rows = rr.table(tmp_path).splitlines()[2:]
    assert rows and all("| not measured |" in row for row in rows)


def test_a_gpu_result_is_judged_on_the_search_not_the_bare_loop(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "trial_rate_cuda.json").write_text(json.dumps({"rows": [
        {"case": "floor (bare loop)", "trials_per_min": 1500.0},
        {"case": "search, MLflow on", "trials_per_min": 700.0},
        {"case": "search, MLflow on, writer process", "trials_per_min": 900.0}],
        "workers": 4, "env": {"gpu": "NVIDIA H200"}}))
    row = next(line for line in rr.table(results).splitlines() if "H200" in line)
    assert "900 (search, MLflow on, writer process, 4 workers; bare loop 1,500)" in row and "| not met |" in row


def test_a_readme_without_markers_is_refused():
    with pytest.raises(ValueError, match="no"):
        rr.replace_block("# no table here\n", "| x |")


def test_llm_rows_give_each_target_per_arm_and_met_only_where_an_arm_meets_it_in_every_seed():
    targets = {key: 3 for key, _ in rr.LLM_TARGETS}
    seeded = {**targets, rr.LLM_TARGETS[1][0]: 2}
    data = {"summary": {"search": {"hv": {"size": {"mean": 0.8, "sd": 0.01}, "decode": {"mean": 0.4, "sd": 0.0}},
                                   "targets": {key: 0 for key in targets}},
                        "seeded": {"hv": {"size": {"mean": 0.85, "sd": 0.0}, "decode": {"mean": 0.45, "sd": 0.0}},
                                   "targets": seeded}},
            "runs": [{}, {}, {}], "setup": {"trials": 50},
            "hv": {"knapsack": {"size": 0.84, "decode": 0.43}, "uniform": {"size": 0.82, "decode": 0.42}}}
    rows = rr.llm_rows(data)
    assert len(rows) == 2 + len(rr.LLM_TARGETS)
    verdicts = {what: (value, verdict) for what, value, _, verdict, _ in rows[2:]}
    first, second = (f"LLM (SmolLM2): {w}" for _, w in rr.LLM_TARGETS[:2])
    assert verdicts[first] == ("search 0 of 3 seeds; seeded 3 of 3 seeds", "met (seeded)")
    assert verdicts[second] == ("search 0 of 3 seeds; seeded 2 of 3 seeds", "not met")
