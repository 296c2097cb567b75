"""`run_search(config) -> SearchResult`: the driver loop that owns the Optuna study (ask / tell).

The loop keeps `backend.capacity` trials in flight, each started and finished by the `TrialBook`
(search/trial_book.py: ask, plan, size, repeat check, tell, MLflow record), until `budget.n_trials` trials
count (`study.counted_trials`) or `budget.timeout_s` passes. Re-running the same config and run directory
resumes the study: finished trials count toward `budget.n_trials` and are never run again.

Faults: every trial ends COMPLETE, PRUNED or FAIL with user attr "error"/"reason". Worker deaths and trial
timeouts are the backend's (workers/backends.py, workers/inflight.py); trials left RUNNING by a dead driver are failed and
queued again (liveness.py); MLflow being down never stops the search (tracking/recorder.py).

Pruning (a `pruner` configured; search/early_stopping.py): each trial sent to a worker gets a companion trial in the
study `<study_name>:pruning`, whose number goes to the worker with the plan. A trial the pruner stops ends
PRUNED with reason "pruned by <pruner> at step k (<metric> x)" and its last intermediate metrics; its
companion ends PRUNED too, and a finished trial's companion ends COMPLETE with the final quality (or FAIL).
A dead driver's trials that liveness.py fails take their companions with them (`early_stopping.end_companions`).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from autocompress.config import SearchConfig
from autocompress.search.rundir.summary import SearchResult, summarize  # noqa: F401
from autocompress.search.tracking.recorder import TrialRecorder
from autocompress.search.trial_book import TrialBook, plan_key
from autocompress.secrets import run_dir_config

REFRESH_S = 1.0  # the progress bar's figures are read from the storage at most this often


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
    from autocompress.search.early_stopping import PruningStudy, end_companions
    from autocompress.search.rundir.identity import check, run_identity
    from autocompress.search.seeding.seed_plans import sensitivity_seeds
    from autocompress.search.study import (counted_trials, join_study, open_study, record_identity, stored_identity,
                                           study_lock)
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
        search = TrialBook(config, study, space, info, recorder, run_dir, liveness, pruning)
        repair(run_dir, study.get_trials(deepcopy=False), space)  # plan files missing or corrupt: rebuilt
        end_companions(pruning, liveness.recover())  # dead drivers' RUNNING trials: FAIL, params queued again
        recorder.reconcile(study.get_trials(deepcopy=False), search.record_of)  # finished, but not in MLflow
        # a fresh study starts from the uniform baselines, so the front is never worse than them: enqueued once
        # however many processes share the study, none left WAITING past the budget; reseeds the sampler
        baselines = list(space.uniform_params().items()) if config.sampler.enqueue_uniform else []
        baselines += sensitivity_seeds(config, study, backend, info, space, recorder, show_progress)
        distinct = {}  # one trial per distinct plan, under the first label that asks for it
        for label, params in baselines:
            distinct.setdefault(plan_key(params), (label, params))
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
