"""`run_search(config) -> SearchResult`: the driver loop that owns the Optuna study (ask / tell).

One trial: `study.ask()` -> the space samples a plan (no weights) -> the plan's size is computed at once;
a plan that breaks a size constraint ends PRUNED with no model work, and a plan identical to a finished
one reuses its metrics -> otherwise the backend runs it (apply + evaluate on a worker that holds the model)
-> constraints set with `trial.set_constraint`, `study.tell`, and one nested MLflow run logged by this
process, the only writer. Re-running the same config and run directory resumes the study: finished trials
count toward `budget.n_trials` and are never run again.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from autocompress.config import SearchConfig, parse_constraint, parse_objective
from autocompress.search.pareto import PickRule, default_rule, markdown_table, metrics_of, pareto_rows
from autocompress.search.trial import TrialOutcome, worker_name


@dataclass
class ParetoTrial:
    number: int
    values: dict[str, float]
    metrics: dict[str, float]
    plan_path: str
    plan_summary: str = ""


@dataclass
class SearchResult:
    study_name: str
    storage: str
    tracking_uri: str
    run_dir: str
    counts: dict[str, int]
    pareto: list[ParetoTrial]
    picked: ParetoTrial | None
    pick_rule: str
    elapsed_s: float
    ui_hint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Search:
    """The state of one invocation of the driver loop."""

    def __init__(self, config: SearchConfig, study: Any, space: Any, info: Any, tracker: Any, run_dir: Path):
        self.config, self.study, self.space, self.info, self.tracker = config, study, space, info, tracker
        self.run_dir = run_dir
        self.objectives = [parse_objective(o) for o in config.objectives]
        self.constraints = [parse_constraint(c) for c in config.constraints]
        self.running: dict[int, tuple[Any, Any, float, dict]] = {}  # number -> (trial, plan, start, plan metrics)
        self.latency = _plan_latency_model(config)
        self.known: dict[str, dict[str, float]] = {}
        self.tracking_warned = False
        for t in study.get_trials(deepcopy=False):
            if t.state.name == "COMPLETE" and "metrics" in t.user_attrs:
                self.known.setdefault(_key(t.params), t.user_attrs["metrics"])

    def plan_path(self, number: int) -> Path:
        return self.run_dir / "plans" / f"trial-{number:04d}.json"

    def constraint_values(self, metrics: dict[str, float]) -> dict[str, float]:
        """Optuna's convention: <= 0 is feasible. A metric not measured (a pruned plan) counts as met."""
        out = {}
        for metric, op, bound in self.constraints:
            value = metrics.get(metric)
            if value is None or not math.isfinite(value):
                out[f"{metric} {op} {bound:g}"] = 0.0 if value is None else 1.0
            else:
                out[f"{metric} {op} {bound:g}"] = (bound - value) if op in (">=", ">") else (value - bound)
        return out

    def plan_metrics(self, plan: Any) -> dict[str, float]:
        """What the plan alone decides: packed size, and latency when the latency model is analytic."""
        from autocompress.evaluators.size import plan_size

        size = plan_size(plan, self.info)
        out = {"size_mb": size.size_mb, "size_ratio": size.ratio}
        if self.latency is not None:
            model, workload = self.latency
            out["latency_ms"] = model.predict(plan, self.info, workload).total_ms
        return out

    def start_trial(self, backend: Any) -> None:
        import optuna

        trial = self.study.ask()
        plan = self.space.sample(trial)
        plan_metrics = self.plan_metrics(plan)
        plan.save(str(self.plan_path(trial.number)))
        trial.set_user_attr("plan_layers", len(plan))
        trial.set_user_attr("plan_summary", plan.summary())
        trial.set_user_attr("plan_path", str(self.plan_path(trial.number)))
        broken = [c for c, v in self.constraint_values(plan_metrics).items() if v > 0]
        now = time.perf_counter()
        if broken:
            self.finish(trial, plan, now, plan_metrics, TrialOutcome(worker=worker_name()),
                        state=optuna.trial.TrialState.PRUNED, reason=f"breaks {broken[0]} (decided by the plan)")
        elif _key(trial.params) in self.known:
            outcome = TrialOutcome(metrics=dict(self.known[_key(trial.params)]), worker="cache")
            self.finish(trial, plan, now, plan_metrics, outcome, reason="same plan as an earlier trial")
        else:
            backend.submit(trial.number, plan.to_json(indent=None))
            self.running[trial.number] = (trial, plan, now, plan_metrics)

    def finish(self, trial: Any, plan: Any, started: float, plan_metrics: dict[str, float], outcome: TrialOutcome,
               state: Any = None, reason: str | None = None) -> str:
        """Record a trial's end in Optuna and MLflow. Returns the final state name."""
        import optuna

        TS = optuna.trial.TrialState
        metrics = {**plan_metrics, **outcome.metrics}
        error = outcome.error
        values = None
        if state is None:
            missing = [m for _, m in self.objectives if m not in metrics]
            if error is None and missing:
                error = f"objective {missing[0]!r} was not measured (the {self.info.task} evaluator gives " \
                        f"{', '.join(sorted(outcome.metrics))})"
            state = TS.FAIL if error else TS.COMPLETE
            values = None if error else [metrics[m] for _, m in self.objectives]
        duration = time.perf_counter() - started
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("worker", outcome.worker)
        trial.set_user_attr("duration_s", duration)
        if error or reason:
            trial.set_user_attr("error" if error else "reason", error or reason)
        for name, value in self.constraint_values(metrics).items():
            trial.set_constraint(name, value)
        self.study.tell(trial, values=values, state=state if values is None else None)
        if state == TS.COMPLETE and outcome.worker != "cache":
            self.known.setdefault(_key(trial.params), metrics)
        log_metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
        log_metrics.update(apply_s=outcome.apply_s, eval_s=outcome.eval_s)
        try:
            self.tracker.log_trial(trial.number, state.name, plan.flatten(), log_metrics, duration,
                                   outcome.worker, plan.to_json(), error or reason)
        except Exception as exc:  # tracking must not stop a search; the trial is safe in the Optuna storage
            if not self.tracking_warned:
                warnings.warn(f"MLflow logging failed ({type(exc).__name__}: {exc}); the search goes on and "
                              "every trial stays in the Optuna storage", stacklevel=1)
                self.tracking_warned = True
        return state.name

    def best(self) -> dict[str, float]:
        best: dict[str, float] = {}
        for t in self.study.best_trials:
            for (direction, metric), v in zip(self.objectives, t.values):
                pick = max if direction == "maximize" else min
                best[metric] = pick(best.get(metric, v), v)
        return best


def _plan_latency_model(config: SearchConfig) -> tuple[Any, Any] | None:
    """(latency model, workload) for a target priced from the plan alone; None without a target or when
    the latency is measured on the workers."""
    t = config.target
    if t is None or t.model_name == "measured":
        return None
    from autocompress.evaluators.latency import LATENCY_MODELS, Workload
    from autocompress.hardware import load_profile

    return LATENCY_MODELS.get(t.model_name)(load_profile(t.profile)), Workload(t.batch, t.seq_len, t.mode)


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _counts(study: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def run_search(config: SearchConfig, show_progress: bool = True, console: Any = None) -> SearchResult:
    """Run (or resume) the search the config describes and return the Pareto set and the picked trial.

    Raises `UserError` for bad input found before the first trial (storage, tracking URI, model, metrics
    the task cannot produce). Trials that fail are recorded as FAIL and the search goes on."""
    import yaml

    from autocompress.search.backends import make_backend
    from autocompress.search.progress import SearchProgress
    from autocompress.search.study import open_study
    from autocompress.search.tracking import open_tracker
    from autocompress.spaces import ConfigSpace

    if config.tracking.uri != "none":
        import mlflow  # noqa: F401  (importing it configures its loggers; quiet them afterwards)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "Creating initial MLflow database tables"
    t_start = time.perf_counter()
    run_dir = Path(config.run_dir)
    (run_dir / "plans").mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    study = open_study(config)
    tracker = open_tracker(config.tracking.uri, config.tracking.experiment, config.study_name, config.storage,
                           config.model_dump(mode="json"), str(run_dir))
    backend = make_backend(config)
    status = "FAILED"
    try:
        info = backend.start()
        config.check_task(info.task)
        budget, timeout = config.budget.n_trials, config.budget.timeout_s
        space = ConfigSpace(config.space, info)
        search = _Search(config, study, space, info, tracker, run_dir)
        if config.sampler.enqueue_uniform and not study.get_trials(deepcopy=False):
            # a fresh study starts from the uniform baselines, so the front is never worse than them
            baselines = list(space.uniform_params().items())[:budget]  # none left WAITING past the budget
            for label, params in baselines:
                study.enqueue_trial(params, user_attrs={"baseline": label}, skip_if_exists=True)
        deadline = None if timeout is None else time.monotonic() + timeout

        def finished() -> int:
            return sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())

        def refresh(bar: SearchProgress) -> None:
            c = _counts(study)
            bar.update(finished(), len(search.running), c.get("FAIL", 0), c.get("PRUNED", 0), search.best())

        with SearchProgress(budget, search.objectives, enabled=show_progress, already_done=finished()) as bar:
            while True:
                while backend.in_flight() < backend.capacity \
                        and (budget is None or finished() + len(search.running) < budget) \
                        and (deadline is None or time.monotonic() < deadline):
                    search.start_trial(backend)
                    refresh(bar)
                if not search.running:
                    break
                for number, outcome in backend.collect():
                    trial, plan, started, plan_metrics = search.running.pop(number)
                    search.finish(trial, plan, started, plan_metrics, outcome)
                    refresh(bar)
        status = "FINISHED"
        return _summarize(config, study, search, tracker, run_dir, time.perf_counter() - t_start)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        backend.close()
        tracker.close(status)


def _summarize(config: SearchConfig, study: Any, search: _Search, tracker: Any, run_dir: Path,
               elapsed: float) -> SearchResult:
    names = [m for _, m in search.objectives]
    front = sorted(study.best_trials, key=lambda t: t.number)
    rule = PickRule.parse(config.pick) if config.pick else default_rule(config.objectives)
    chosen = rule.choose(front)

    def entry(t: Any) -> ParetoTrial:
        return ParetoTrial(t.number, dict(zip(names, t.values)), metrics_of(t), str(search.plan_path(t.number)),
                           t.user_attrs.get("plan_summary", ""))

    counts = _counts(study)
    header, rows = pareto_rows(front, config.objectives)
    table = markdown_table(header, rows)
    (run_dir / "pareto.md").write_text(table)
    tracker.log_text(table, "pareto.md")
    best = search.best()
    tracker.log_metrics({**{f"best_{k}": v for k, v in best.items()},
                         **{f"trials_{k.lower()}": float(v) for k, v in counts.items()}})
    result = SearchResult(
        study_name=config.study_name, storage=config.storage, tracking_uri=config.tracking.uri,
        run_dir=str(run_dir), counts=counts, pareto=[entry(t) for t in front],
        picked=entry(chosen) if chosen is not None else None, pick_rule=str(rule), elapsed_s=elapsed,
        ui_hint=tracker.ui_hint())
    (run_dir / "summary.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result
