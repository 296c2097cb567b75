"""The end of a search: the Pareto front, the picked trial, `pareto.md`, `summary.json`, and the
`SearchResult` that `run_search` returns (and `autocompress search --json` prints)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autocompress.config import SearchConfig
from autocompress.secrets import mask_url
from autocompress.search.pareto import PickRule, default_rule, markdown_table, pareto_rows
from autocompress.search.rundir.trial_result import TrialResult


@dataclass
class SearchResult:
    study_name: str
    storage: str
    tracking_uri: str
    run_dir: str
    counts: dict[str, int]
    pareto: list[TrialResult]  # the feasible Pareto front, by trial number
    picked: TrialResult | None
    pick_rule: str
    elapsed_s: float
    ui_hint: str = ""
    untracked: list[int] = field(default_factory=list)  # finished trials only in the Optuna storage, not MLflow
    repeats: int = 0  # trials whose plan an earlier trial had evaluated (metrics reused; not in `pareto`)
    hint: str = ""  # advice on the config drawn from how the search went (`writer_hint`), else empty

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def counts_by_state(study: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


SHORT_TRIAL_S = 1.0  # a median trial shorter than this makes MLflow's writer thread a large share of the driver


def writer_hint(config: SearchConfig, trials: list[Any]) -> str:
    """The advice to log through a child process (`tracking.writer: process`) when MLflow logging ran on the
    driver's writer thread and the evaluated trials (10 or more) took a median under SHORT_TRIAL_S; else ""."""
    if config.tracking.uri == "none" or config.tracking.writer != "thread":
        return ""
    durations = sorted(t.user_attrs["duration_s"] for t in trials if t.state.name in ("COMPLETE", "FAIL")
                       and t.user_attrs.get("worker") not in (None, "cache") and "duration_s" in t.user_attrs)
    median = durations[len(durations) // 2] if len(durations) >= 10 else None
    if median is None or median >= SHORT_TRIAL_S:
        return ""
    return (f"trials took a median {median:.2f} s: with `tracking.writer: process` MLflow "
            "logs from a child process instead of the driver's interpreter (about twice the trials per minute for "
            "trials this short; README, What the orchestration costs)")


def summarize(config: SearchConfig, study: Any, search: Any, recorder: Any, run_dir: Path,
              elapsed: float) -> SearchResult:
    """Write pareto.md and summary.json, log the table and best values on the MLflow parent run (through the
    `TrialRecorder`, after its last try at the trials kept while MLflow was down) and return the result."""
    from autocompress.search.study import is_repeat, pareto_front

    names = [m for _, m in search.objectives]
    front = pareto_front(study)
    rule = PickRule.parse(config.pick) if config.pick else default_rule(config.objectives)
    chosen = rule.choose(front)

    def entry(t: Any) -> TrialResult:
        return TrialResult.of(t, names, str(search.plan_path(t.number)), front=True)

    counts = counts_by_state(study)
    trials = study.get_trials(deepcopy=False)  # read once for the repeats and the hint
    header, rows = pareto_rows(front, config.objectives)
    table = markdown_table(header, rows)
    (run_dir / "pareto.md").write_text(table)
    untracked = recorder.finish()  # the last try for trials kept while MLflow was down; warns if any remain
    recorder.call("log_text", table, "pareto.md")
    best = search.best()
    recorder.call("log_metrics", {**{f"best_{k}": v for k, v in best.items()},
                                  **{f"trials_{k.lower()}": float(v) for k, v in counts.items()}})
    result = SearchResult(
        study_name=config.study_name, storage=mask_url(config.storage), tracking_uri=mask_url(config.tracking.uri),
        run_dir=str(run_dir), counts=counts, pareto=[entry(t) for t in front],
        picked=entry(chosen) if chosen is not None else None, pick_rule=str(rule), elapsed_s=elapsed,
        ui_hint=recorder.tracker.ui_hint(), untracked=untracked,
        repeats=sum(1 for t in trials if is_repeat(t)), hint=writer_hint(config, trials))
    (run_dir / "summary.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result
