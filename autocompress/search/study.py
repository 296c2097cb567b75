"""The Optuna study behind a search: storage, sampler, directions, and the two things several processes
sharing one study (a sweep) must agree on: the baselines are enqueued once, and a plan one process already
finished is not run again by another. Optuna does the storing (see `autocompress.search.storage` for the
URL forms); this only maps the config onto it and turns its failures into one-line `UserError`s."""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

from autocompress.config import SearchConfig, parse_objective
from autocompress.errors import UserError
from autocompress.search.storage import close_storage, display_url, open_storage

LOCK_SUFFIX = ":autocompress-lock"  # name suffix of the short-lived study that is `study_lock`
STALE_S = 120.0  # a lock held longer than this by one holder is taken as left by a killed process
JOINS_ATTR = "autocompress:joins"  # study system attr: how many processes have joined the study


def _sampler(config: SearchConfig, offset: int) -> Any:
    from autocompress.search.samplers import make_sampler  # imports optuna: not at module import

    return make_sampler(config, offset)


def open_study(config: SearchConfig) -> Any:
    """Create the study, or load it when the storage already holds one of this name (resume, or another
    process of a sweep created it first: creation is atomic in every Optuna storage).

    Raises `UserError` when the storage URL cannot be opened or the stored study has other objectives."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(config.storage)
    directions = [parse_objective(o)[0] for o in config.objectives]
    metrics = [parse_objective(o)[1] for o in config.objectives]
    probe = optuna.create_study(storage=storage, study_name=config.study_name, directions=directions,
                                load_if_exists=True)
    existing = probe.metric_names
    if [d.name.lower() for d in probe.directions] != directions or (existing and existing != metrics):
        close_storage(storage)  # refused: leave the run directory as it was (no -wal, -shm files)
        have = existing or [d.name.lower() for d in probe.directions]
        raise UserError(f"study {config.study_name!r} in {display_url(config.storage)} was created with "
                        f"objectives {have}; use another study_name or run_dir to search with different objectives")
    if not existing:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            probe.set_metric_names(metrics)
    finished = sum(1 for t in probe.get_trials(deepcopy=False) if t.state.is_finished())
    return optuna.load_study(study_name=config.study_name, storage=storage,
                             sampler=_sampler(config, finished))


def stored_identity(config: SearchConfig) -> dict[str, Any] | None:
    """The identity (search/rundir/identity.py) recorded in the study `config` names, read without creating
    anything: None when the storage or the study does not exist yet, or the study was made before
    identities were recorded. `UserError` when the storage cannot be opened."""
    import os

    import optuna

    from autocompress.search.rundir.identity import ATTR
    from autocompress.search.storage import journal_path, storage_kind

    url, kind = config.storage, storage_kind(config.storage)
    if kind == "sqlite" and url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):].split("?")[0]
        if path != ":memory:" and not (os.path.isfile(path) and os.path.getsize(path) > 0):
            return None
    if kind == "journal" and not os.path.isfile(journal_path(url)):
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url)
    try:
        study_id = storage.get_study_id_from_name(config.study_name)
        return storage.get_study_user_attrs(study_id).get(ATTR)
    except KeyError:
        return None
    finally:
        close_storage(storage)  # a refused resume leaves no -wal / -shm file behind


def record_identity(study: Any, identity: dict[str, Any], where: str = "the config") -> None:
    """Store `identity` in `study` (user attr `identity.ATTR`) when the study is new (no identity, no
    trials); check it against the stored one otherwise (`identity.check`: `UserError` naming the
    difference). A study made before identities were recorded (trials, no identity) is left as it is."""
    from autocompress.search.rundir.identity import ATTR, check

    stored = study.user_attrs.get(ATTR)
    if stored is None and not study.get_trials(deepcopy=False):
        study.set_user_attr(ATTR, identity)
    else:
        check(stored, identity, where)


def join_study(study: Any, config: SearchConfig, baselines: Sequence[tuple[str, Mapping[str, Any]]] = (),
               stale_s: float = STALE_S) -> int:
    """Register this process with the study before its first `ask`, safely however many processes of a
    sweep do it at the same time. Returns the join number: 0 for the first process ever to run this study,
    1 for the next (a resume, or the second process of a sweep), and so on.

    Under the study's mutex (`study_lock(study, stale_s)`) it (1) takes the join number (study system attr
    "autocompress:joins"), and (2) enqueues `baselines` ((label, params) pairs, user_attr "baseline" = label)
    if the study has no trials, so they are enqueued exactly once and are WAITING before any process asks:
    a caller takes a baseline before any sampled trial, and a budget >= len(baselines) leaves none WAITING.
    Then it sets `study.sampler` to the configured sampler seeded with seed + finished trials + join number,
    so two processes of a sweep do not draw the same plans while one process alone stays reproducible."""
    storage = study._storage  # Optuna's Study has no public accessor for the storage it was loaded from
    study_id = storage.get_study_id_from_name(study.study_name)
    with study_lock(study, stale_s):
        join = int(storage.get_study_system_attrs(study_id).get(JOINS_ATTR, 0))
        storage.set_study_system_attr(study_id, JOINS_ATTR, join + 1)
        if baselines and not study.get_trials(deepcopy=False):
            for label, params in baselines:
                study.enqueue_trial(dict(params), user_attrs={"baseline": label}, skip_if_exists=True)
    finished = sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())
    study.sampler = _sampler(config, finished + join)
    return join


@contextmanager
def study_lock(study: Any, stale_s: float = STALE_S) -> Iterator[None]:
    """A mutex shared by every process that opens this study in this storage, for short critical sections
    (find-or-create, check-then-enqueue). It is a study named `<study>:autocompress-lock`: Optuna creates a
    study name atomically in every storage (a unique index in SQL, the log order in a journal), and the
    holder deletes it on exit, exceptions included. A lock kept by the same holder for `stale_s` seconds is
    taken as left by a killed process and removed (a warning says so after 10 s). Not re-entrant."""
    import optuna

    storage, name = study._storage, study.study_name + LOCK_SUFFIX
    holder, since, warned, pause = None, time.monotonic(), False, 0.02
    while True:
        current = _study_id(storage, name)  # a read: a failed create would append to a journal's log
        if current is None:
            try:
                mine = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], name)
                break
            except optuna.exceptions.DuplicatedStudyError:  # taken in between
                continue
        if current != holder:
            holder, since = current, time.monotonic()
        elif time.monotonic() - since > stale_s:
            _delete(storage, current)
        elif time.monotonic() - since > 10 and not warned:
            warnings.warn(f"waiting for study {name!r}, the lock of another process of this study; if no "
                          f"other search of it runs, it was left by a killed one and is removed after "
                          f"{stale_s:.0f} s", stacklevel=3)
            warned = True
        time.sleep(pause)
        pause = min(pause * 1.5, 0.5)
    try:
        yield
    finally:
        _delete(storage, mine)


def finished_metrics(study: Any, params: Mapping[str, Any], trials: list[Any] | None = None) -> dict[str, float] | None:
    """The metrics of a COMPLETE trial of `study` with exactly these params (finished by any process),
    else None: what lets a sweep reuse a plan another process already evaluated. `trials`: the study's
    trials as the caller just read them (read here when None)."""
    import optuna

    complete = optuna.trial.TrialState.COMPLETE
    for t in study.get_trials(deepcopy=False, states=(complete,)) if trials is None else trials:
        if t.state == complete and t.params == dict(params) and "metrics" in t.user_attrs:
            return dict(t.user_attrs["metrics"])
    return None


def _study_id(storage: Any, lock: str) -> int | None:
    try:
        return storage.get_study_id_from_name(lock)
    except KeyError:
        return None


def _delete(storage: Any, study_id: int) -> None:
    try:
        storage.delete_study(study_id)
    except KeyError:  # already removed (taken as stale by another process)
        pass


def assign_generation(study: Any, trial: Any) -> None:
    """Give a just-asked trial its generation when the sampler is genetic (NSGA-II / III).

    Optuna 5's genetic samplers set a trial's generation in `sample_relative`, which a trial whose params are
    all enqueued (the uniform baselines, sensitivity seeds, re-queued trials) never calls: such trials belong
    to no generation and never become parents, so the evolution ignores the very plans seeded to help it.
    Calling `get_trial_generation` at ask time records the generation of an enqueued trial; for a sampled trial it
    is the value `sample_relative` would compute at the same moment, so a trial with no enqueued params is
    left to `sample_relative` (computing it twice costs a read of every trial)."""
    from optuna.samplers._ga._base import BaseGASampler

    sampler = study.sampler
    if isinstance(sampler, BaseGASampler):  # the trial as `ask` just read it, else read it again
        frozen = getattr(trial, "_cached_frozen_trial", None) or study._storage.get_trial(trial._trial_id)
        if "fixed_params" in frozen.system_attrs:  # Optuna's mark of an enqueued trial
            sampler.get_trial_generation(study, frozen)


def pareto_front(study: Any) -> list[Any]:
    """The study's feasible Pareto trials by number, each plan once: repeats (`is_repeat`) left out."""
    return sorted((t for t in study.best_trials if not is_repeat(t)), key=lambda t: t.number)


def is_repeat(trial: Any) -> bool:
    """A finished trial whose plan an earlier trial had evaluated: its metrics were reused, no work done
    (user attr `worker` "cache"). Repeats do not count toward the budget (`counted_trials`) and are left
    out of the Pareto tables (`pareto_front`)."""
    return trial.state.is_finished() and trial.user_attrs.get("worker") == "cache"


def counted_trials(trials: list[Any], budget: int | None) -> int:
    """How many of `trials` count toward `budget.n_trials`: the finished ones, where a trial failed with its
    driver and queued again counts once, and a repeat (`is_repeat`) not at all, up to `budget` repeats (so a
    space with fewer distinct plans than the budget still ends: the repeats beyond that count)."""
    from autocompress.search.liveness import superseded

    done = sum(1 for t in trials if t.state.is_finished()) - len(superseded(trials))
    return done - min(sum(1 for t in trials if is_repeat(t)), budget or 0)
