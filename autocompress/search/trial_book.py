"""`TrialBook`: one trial of the search, from `study.ask()` to `study.tell()`, and its MLflow record.

One trial: `study.ask()` -> the space samples a plan (no weights) -> the plan's size is computed at once;
a plan that breaks a size constraint ends PRUNED with no model work, and a plan identical to a finished
one reuses its metrics (a "repeat": it does not count toward `budget.n_trials`, see `study.counted_trials`)
-> otherwise the backend runs it (apply + evaluate on a worker that holds the model) -> constraints set with
`trial.set_constraint`, `study.tell`, and one nested MLflow run logged by this process, the only writer.
Every trial ends COMPLETE, PRUNED or FAIL with user attr "error"/"reason".

With a pruner, each trial sent to a worker gets a companion trial in the study `<study_name>:pruning`
(search/early_stopping.py), whose number goes to the worker with the plan; the companion ends with its trial.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocompress.config import SearchConfig, parse_constraint, parse_objective
from autocompress.search.pareto import best_values
from autocompress.search.plan_targets import memory_target, plan_latency_model
from autocompress.search.rundir.plan_files import plan_path
from autocompress.search.study import assign_generation, finished_metrics
from autocompress.search.tracking.recorder import TrialRecord, TrialRecorder
from autocompress.search.trial_writes import one_transaction
from autocompress.search.workers.runner import TrialOutcome, worker_name

if TYPE_CHECKING:
    from autocompress.search.workers.backends import Backend


class TrialBook:
    """The driver's book of one study's trials for one invocation of the driver loop: the trials sent to
    workers (`running`), their pruning companions (`companions`), the metrics of finished plans (`known`),
    and the starting and ending of each trial."""

    def __init__(self, config: SearchConfig, study: Any, space: Any, info: Any, recorder: TrialRecorder,
                 run_dir: Path, liveness: Any = None, pruning: Any = None):
        self.config, self.study, self.space, self.info, self.recorder = config, study, space, info, recorder
        self.run_dir, self.liveness = run_dir, liveness
        self.pruning, self.companions = pruning, {}  # PruningStudy or None; trial number -> companion number
        self.objectives = [parse_objective(o) for o in config.objectives]
        self.constraints = [parse_constraint(c) for c in config.constraints]
        self.running: dict[int, tuple[Any, Any, float, dict]] = {}  # number -> (trial, plan, start, plan metrics)
        self.latency = plan_latency_model(config)
        self.memory = memory_target(config)
        self.known: dict[str, dict[str, float]] = {}
        for t in study.get_trials(deepcopy=False):
            if t.state.name == "COMPLETE" and "metrics" in t.user_attrs:
                self.known.setdefault(plan_key(t.params), t.user_attrs["metrics"])

    def plan_path(self, number: int) -> Path:
        return plan_path(self.run_dir, number)

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
        """What the plan alone decides: packed size; with a target, memory (weights + KV cache), and latency
        when the latency model is analytic."""
        from autocompress.evaluators.size import plan_memory, plan_size

        size = plan_size(plan, self.info)
        out = {"size_mb": size.size_mb, "size_ratio": size.ratio}
        if self.memory is not None:
            out["memory_mb"] = plan_memory(plan, self.info, *self.memory).memory_mb
        if self.latency is not None:
            model, workload = self.latency
            out["latency_ms"] = model.predict(plan, self.info, workload).total_ms
        return out

    def start_trial(self, backend: Backend, trials: list[Any] | None = None) -> None:
        """Ask, sample and size a plan; end it at once (PRUNED by the plan, or a repeat of a finished plan)
        or send it to `backend`. `trials`: the study's trials as the loop just read them (for the repeat
        check; read again when None)."""
        import optuna

        with warnings.catch_warnings():  # "Heartbeat ... supposed to be used with Study.optimize": liveness.py
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = self.study.ask()
        assign_generation(self.study, trial)
        if self.liveness is not None:
            self.liveness.started(trial)
        with one_transaction(trial):  # the plan's ~50 params and its attributes: one commit, not one each
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
        elif known := self.known.get(plan_key(trial.params)) or finished_metrics(self.study, trial.params, trials):
            outcome = TrialOutcome(metrics=dict(known), worker="cache")  # finished here or by a sweep's other process
            self.finish(trial, plan, now, plan_metrics, outcome, reason="same plan as an earlier trial")
        else:
            if self.pruning is not None:
                self.companions[trial.number] = self.pruning.ask(trial.number)
                trial.set_user_attr("pruning_trial", self.companions[trial.number])
            backend.submit(trial.number, plan.to_json(indent=None), self.companions.get(trial.number))
            self.running[trial.number] = (trial, plan, now, plan_metrics)

    def finish(self, trial: Any, plan: Any, started: float, plan_metrics: dict[str, float], outcome: TrialOutcome,
               state: Any = None, reason: str | None = None) -> str:
        """Record a trial's end in Optuna and MLflow. Returns the final state name."""
        import optuna

        TS = optuna.trial.TrialState
        metrics = {**plan_metrics, **outcome.metrics}
        error = outcome.error
        values = None
        if state is None and outcome.pruned and not error:
            state, reason = TS.PRUNED, f"pruned by {self.config.pruner.name} {outcome.pruned}"
        if state is None:
            missing = [m for _, m in self.objectives if m not in metrics]
            if error is None and missing:
                error = f"objective {missing[0]!r} was not measured (the {self.info.task} evaluator gives " \
                        f"{', '.join(sorted(outcome.metrics))})"
            state = TS.FAIL if error else TS.COMPLETE
            values = None if error else [metrics[m] for _, m in self.objectives]
        duration = time.perf_counter() - started
        with one_transaction(trial):
            trial.set_user_attr("metrics", metrics)
            trial.set_user_attr("worker", outcome.worker)
            trial.set_user_attr("duration_s", duration)
            if outcome.apply_s or outcome.eval_s:  # the worker's own work, without dispatch and logging
                trial.set_user_attr("work_s", outcome.apply_s + outcome.eval_s)
            if outcome.torch_threads:  # `export` rebuilds the plan with as many (export/from_run.py)
                trial.set_user_attr("torch_threads", outcome.torch_threads)
            if error or reason:
                trial.set_user_attr("error" if error else "reason", error or reason)
            if outcome.retries:  # its worker died and it ran again on a new one (same trial, same params)
                trial.set_user_attr("retries", outcome.retries)
                trial.set_user_attr("retry_reasons", outcome.retry_reasons)
            for name, value in self.constraint_values(metrics).items():
                trial.set_constraint(name, value)
        self.study.tell(trial, values=values, state=state if values is None else None)
        if trial.number in self.companions:
            self.pruning.tell(self.companions.pop(trial.number), state.name, metrics)
        if state == TS.COMPLETE and outcome.worker != "cache":
            self.known.setdefault(plan_key(trial.params), metrics)
        if self.liveness is not None:
            self.liveness.ended(trial.number)
        self.recorder.record(TrialRecord(trial.number, state.name, plan.flatten(), metrics, duration, outcome.worker,
                                         plan.to_json(), error or reason,
                                         extra={"apply_s": outcome.apply_s, "eval_s": outcome.eval_s}))
        return state.name

    def record_of(self, t: Any) -> TrialRecord:
        """A finished trial of the storage as MLflow shows it (for trials this process did not log)."""
        import optuna

        from autocompress.plan import CompressionPlan

        path, plan = self.plan_path(t.number), None
        try:
            plan = CompressionPlan.load(str(path)) if path.is_file() else \
                self.space.sample(optuna.trial.FixedTrial(t.params))
        except Exception:  # the plan file is elsewhere (another host) and the params do not fit this space
            pass
        a = t.user_attrs
        return TrialRecord(t.number, t.state.name, plan.flatten() if plan else dict(t.params), a.get("metrics", {}),
                           a.get("duration_s", t.duration.total_seconds() if t.duration else 0.0),
                           a.get("worker", ""), plan.to_json() if plan else None, a.get("error") or a.get("reason"))

    def best(self, trials: list[Any] | None = None) -> dict[str, float]:
        """`best_values` of the study's trials (`trials`, read from the study when None)."""
        return best_values(self.study.get_trials(deepcopy=False) if trials is None else trials, self.objectives)


def plan_key(params: dict[str, Any]) -> str:
    """The identity of a plan by its params: two trials of one key sample the same plan."""
    return json.dumps(params, sort_keys=True, default=str)
