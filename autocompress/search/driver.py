"""`run_search(config) -> SearchResult`: the driver loop that owns the Optuna study (ask / tell).

One trial: `study.ask()` -> the space samples a plan (no weights) -> the plan's size is computed at once;
a plan that breaks a size constraint ends PRUNED with no model work, and a plan identical to a finished
one reuses its metrics (a "repeat": it does not count toward `budget.n_trials`, see `counted_trials`) ->
otherwise the backend runs it (apply + evaluate on a worker that holds the model) -> constraints set with
`trial.set_constraint`, `study.tell`, and one nested MLflow run logged by this process, the only writer.
Re-running the same config and run directory resumes the study: finished trials count toward
`budget.n_trials` and are never run again.

Faults: every trial ends COMPLETE, PRUNED or FAIL with user attr "error"/"reason". Worker deaths and trial
timeouts are the backend's (workers/backends.py, workers/inflight.py); trials left RUNNING by a dead driver are failed and
queued again (liveness.py); MLflow being down never stops the search (tracking/recorder.py).

Pruning (a `pruner` configured; search/early_stopping.py): each trial sent to a worker gets a companion trial in the
study `<study_name>:pruning`, whose number goes to the worker with the plan. A trial the pruner stops ends
PRUNED with reason "pruned by <pruner> at step k (<metric> x)" and its last intermediate metrics; its
companion ends PRUNED too, and a finished trial's companion ends COMPLETE with the final quality (or FAIL).
A dead driver's trials that liveness.py fails take their companions with them (`end_companions`).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocompress.config import SearchConfig, parse_constraint, parse_objective
from autocompress.search.rundir.plan_files import plan_path
from autocompress.search.tracking.recorder import TrialRecord, TrialRecorder
from autocompress.search.study import assign_generation, finished_metrics, is_repeat
from autocompress.search.rundir.summary import SearchResult, summarize  # noqa: F401
from autocompress.search.workers.runner import TrialOutcome, worker_name
from autocompress.search.trial_writes import one_transaction
from autocompress.secrets import run_dir_config

if TYPE_CHECKING:
    from autocompress.search.workers.backends import Backend

REFRESH_S = 1.0  # the progress bar's figures are read from the storage at most this often


class _Search:
    """The state of one invocation of the driver loop."""

    def __init__(self, config: SearchConfig, study: Any, space: Any, info: Any, recorder: TrialRecorder,
                 run_dir: Path, liveness: Any = None, pruning: Any = None):
        self.config, self.study, self.space, self.info, self.recorder = config, study, space, info, recorder
        self.run_dir, self.liveness = run_dir, liveness
        self.pruning, self.companions = pruning, {}  # PruningStudy or None; trial number -> companion number
        self.objectives = [parse_objective(o) for o in config.objectives]
        self.constraints = [parse_constraint(c) for c in config.constraints]
        self.running: dict[int, tuple[Any, Any, float, dict]] = {}  # number -> (trial, plan, start, plan metrics)
        self.latency = _plan_latency_model(config)
        self.memory = _memory_target(config)
        self.known: dict[str, dict[str, float]] = {}
        for t in study.get_trials(deepcopy=False):
            if t.state.name == "COMPLETE" and "metrics" in t.user_attrs:
                self.known.setdefault(_key(t.params), t.user_attrs["metrics"])

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
        elif known := self.known.get(_key(trial.params)) or finished_metrics(self.study, trial.params, trials):
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
            self.known.setdefault(_key(trial.params), metrics)
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


def best_values(trials: list[Any], objectives: list[tuple[str, str]]) -> dict[str, float]:
    """metric -> its best value over the feasible complete `trials`: the extremes of `study.best_trials`
    (the Pareto set holds each objective's optimum), from a list of trials already read."""
    best: dict[str, float] = {}
    for t in trials:
        if t.state.name != "COMPLETE" or t.values is None or any(v > 0 for v in t.constraints.values()):
            continue
        for (direction, metric), v in zip(objectives, t.values):
            pick = max if direction == "maximize" else min
            best[metric] = pick(best.get(metric, v), v)
    return best


def end_companions(pruning: Any, failed: list[Any]) -> list[Any]:
    """End FAIL the pruning-study companions (user attr `pruning_trial`) of `failed`, main trials a dead
    driver left RUNNING and liveness.py just failed; one another process ended already is left as it is.
    Returns `failed`."""
    for t in failed if pruning is not None else []:
        number = t.user_attrs.get("pruning_trial")
        if number is not None:
            try:
                pruning.tell(number, "FAIL", {})
            except ValueError:  # "Cannot tell a FAIL trial": already ended
                pass
    return failed


def counted_trials(trials: list[Any], budget: int | None) -> int:
    """How many of `trials` count toward `budget.n_trials`: the finished ones, where a trial failed with its
    driver and queued again counts once, and a repeat (`is_repeat`) not at all, up to `budget` repeats (so a
    space with fewer distinct plans than the budget still ends: the repeats beyond that count)."""
    from autocompress.search.liveness import superseded

    done = sum(1 for t in trials if t.state.is_finished()) - len(superseded(trials))
    return done - min(sum(1 for t in trials if is_repeat(t)), budget or 0)


def _plan_latency_model(config: SearchConfig) -> tuple[Any, Any] | None:
    """(latency model, workload) for a target priced from the plan alone; None without a target or when
    the latency is measured on the workers."""
    t = config.target
    if t is None or t.model_name == "measured":
        return None
    from autocompress.evaluators.latency import LATENCY_MODELS, Workload
    from autocompress.hardware import load_profile

    return LATENCY_MODELS.get(t.model_name)(load_profile(t.profile)), Workload(t.batch, t.seq_len, t.mode)


def _memory_target(config: SearchConfig) -> tuple[int, int, str] | None:
    """(batch, seq_len, deployment dtype) the `memory_mb` metric is computed at: the target's; None without one."""
    t = config.target
    if t is None:
        return None
    from autocompress.hardware import load_profile

    return t.batch, t.seq_len, load_profile(t.profile).dtype


def _sensitivity_seeds(config: SearchConfig, study: Any, backend: Backend, info: Any, space: Any,
                       recorder: Any, show_progress: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """(label, params) of the plans seeded from per-unit sensitivity, for a fresh study whose config asks
    for them (measured on this backend, with a progress bar when `show_progress`, or read from the run
    directory's cache); else none."""
    s = config.sensitivity
    if s is None or not s.seed or study.get_trials(deepcopy=False):
        return []
    from autocompress.search.seeding.allocation import budget_params
    from autocompress.search.seeding.sensitivity import FILE, load_or_measure, seed_params

    from autocompress.search import interrupts
    from autocompress.search.progress import sensitivity_progress

    # minutes of trial work before the first trial, nothing written until it ends
    with interrupts.interruptible(), sensitivity_progress(enabled=show_progress) as progress:
        sens, _ = load_or_measure(config, backend, info, space, Path(config.run_dir), progress=progress)
    recorder.call("log_text", (Path(config.run_dir) / FILE).read_text(), FILE)
    seeds = seed_params(space, sens, s.thresholds)
    if s.budgets:
        seeds.update(budget_params(space, sens, info, _plan_latency_model(config)))
    return list(seeds.items())


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def run_search(config: SearchConfig, show_progress: bool = True, console: Any = None) -> SearchResult:
    """Run (or resume) the search the config describes and return the Pareto set and the picked trial.

    Raises `UserError` for bad input found before the first trial (storage, tracking URI, model, metrics
    the task cannot produce). Trials that fail are recorded as FAIL and the search goes on. Ctrl-C (SIGINT)
    raises KeyboardInterrupt at once while trials run or the driver waits for them, and otherwise after the
    storage call it arrives in (search/interrupts.py); the trials then running end FAIL, queued again."""
    from autocompress.search import interrupts

    with interrupts.guard():
        return _run_search(config, show_progress, console)


def _run_search(config: SearchConfig, show_progress: bool, console: Any) -> SearchResult:
    import yaml

    from autocompress.search import interrupts
    from autocompress.search.workers.backends import make_backend
    from autocompress.search.liveness import Liveness
    from autocompress.search.rundir.plan_files import repair
    from autocompress.search.progress import SearchProgress
    from autocompress.search.early_stopping import PruningStudy
    from autocompress.search.rundir.identity import check, run_identity
    from autocompress.search.study import join_study, open_study, record_identity, stored_identity, study_lock
    from autocompress.search.tracking.runs import open_tracker
    from autocompress.spaces import ConfigSpace

    if config.tracking.uri != "none":
        import mlflow  # noqa: F401  (importing it configures its loggers; quiet them afterwards)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "Creating initial MLflow database tables"
    t_start = time.perf_counter()
    from autocompress.search.preflight import preflight

    task = preflight(config)  # bad input fails here, before anything is written
    from autocompress.depth.cache import resolve_order

    say = (lambda line: print(line, file=sys.stderr, flush=True)) if show_progress else None
    config = resolve_order(config, say)  # space.depth: Block Influence once per run (run dir cache), into config.yaml
    identity = run_identity(config, task)  # a resume searches what the run searched (search/rundir/identity.py)
    check(stored_identity(config), identity, where="the config")
    run_dir = Path(config.run_dir)
    study = open_study(config)  # a resume refused (other objectives) before config.yaml is rewritten
    (run_dir / "plans").mkdir(parents=True, exist_ok=True)
    written, notes = run_dir_config(config)  # no password in the run directory
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(written, sort_keys=False))
    with study_lock(study):  # the processes of a sweep find-or-create one MLflow parent run, one at a time
        record_identity(study, identity)
        tracker = open_tracker(config.tracking.uri, config.tracking.experiment, config.study_name, config.storage,
                               written, str(run_dir))
    if config.tracking.writer == "process" and tracker.uri != "none":
        from autocompress.search.tracking.writer_process import TrackerProcess

        tracker = TrackerProcess(tracker)  # the nested runs logged by a child process, beside the driver
    recorder = TrialRecorder(tracker, config.storage, config.tracking.timeout_s, config.tracking.retry_s)
    liveness = Liveness(study, config.backend.heartbeat_s, config.backend.max_retries)
    backend = make_backend(config)
    status, search = "FAILED", None
    try:
        with interrupts.interruptible():  # loading the model, starting workers
            info = backend.start()
        config.check_task(info.task)
        budget, timeout = config.budget.n_trials, config.budget.timeout_s
        space = ConfigSpace(config.space, info, config.target_format)
        pruning = PruningStudy(config, study, info.task) if config.pruner.name != "none" else None
        search = _Search(config, study, space, info, recorder, run_dir, liveness, pruning)
        repair(run_dir, study.get_trials(deepcopy=False), space)  # plan files missing or corrupt: rebuilt
        end_companions(pruning, liveness.recover())  # dead drivers' RUNNING trials: FAIL, params queued again
        recorder.reconcile(study.get_trials(deepcopy=False), search.record_of)  # finished, but not in MLflow
        # a fresh study starts from the uniform baselines, so the front is never worse than them: enqueued once
        # however many processes share the study, none left WAITING past the budget; reseeds the sampler
        baselines = list(space.uniform_params().items()) if config.sampler.enqueue_uniform else []
        baselines += _sensitivity_seeds(config, study, backend, info, space, recorder, show_progress)
        distinct = {}  # one trial per distinct plan, under the first label that asks for it
        for label, params in baselines:
            distinct.setdefault(_key(params), (label, params))
        baselines = list(distinct.values())[:budget]
        join_study(study, config, baselines)
        deadline = None if timeout is None else time.monotonic() + timeout

        def finished(trials: list[Any] | None = None) -> int:
            trials = study.get_trials(deepcopy=False) if trials is None else trials
            return counted_trials(trials, budget)

        last_refresh = [0.0]

        def refresh(bar: SearchProgress, force: bool = False) -> None:
            # each refresh reads every trial back from the storage once: at most once a second, so a driver
            # of short trials does not spend its time redrawing the bar (the bar's clock runs on its own)
            if not show_progress or (not force and time.monotonic() - last_refresh[0] < REFRESH_S):
                return
            last_refresh[0] = time.monotonic()
            trials = study.get_trials(deepcopy=False)
            states = [t.state.name for t in trials]
            running = min(len(search.running), backend.workers)  # the rest wait for a free worker
            bar.update(finished(trials), running, states.count("FAIL"), states.count("PRUNED"), search.best(trials))

        next_check = time.monotonic() + config.backend.heartbeat_s
        with SearchProgress(budget, search.objectives, enabled=show_progress, already_done=finished()) as bar, \
                liveness:
            while True:
                interrupts.check()  # a Ctrl-C that came during the storage work of the last iteration
                if time.monotonic() > next_check:  # a driver sharing the study may have died since
                    for t in end_companions(pruning, liveness.recover()):
                        recorder.record(search.record_of(t))
                    next_check = time.monotonic() + config.backend.heartbeat_s
                while backend.in_flight() < backend.capacity and (deadline is None or time.monotonic() < deadline):
                    trials = study.get_trials(deepcopy=False)  # one read: the budget and the repeat check
                    if budget is not None and finished(trials) + len(search.running) >= budget:
                        break
                    search.start_trial(backend, trials)
                    refresh(bar)
                if not search.running:
                    refresh(bar, force=True)
                    break
                with interrupts.interruptible():  # waiting for (or, locally, running) a trial
                    outcomes = backend.collect()
                for number, outcome in outcomes:
                    trial, plan, started, plan_metrics = search.running.pop(number)
                    search.finish(trial, plan, started, plan_metrics, outcome)
                    refresh(bar)
        status = "FINISHED"
        return summarize(config, study, search, recorder, run_dir, time.perf_counter() - t_start)
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else status
        if search is not None:  # trials still running end FAIL now, queued again for the next run
            for t in liveness.release(f"driver stopped ({type(exc).__name__})"):
                recorder.record(search.record_of(t))
            for number in list(search.companions):  # their main trials failed just above
                try:
                    search.pruning.tell(search.companions.pop(number), "FAIL", {})
                except Exception:  # the storage is what failed: the original error is the one to raise
                    break
        raise
    finally:
        backend.close()
        recorder.close(status)
