"""The Optuna study behind a search: storage, sampler, directions. Optuna does all of it; this only maps
the config onto it and turns its failures into one-line `UserError`s."""

from __future__ import annotations

import os
import warnings
from typing import Any

from autocompress.config import SearchConfig, parse_objective
from autocompress.errors import UserError


def make_sampler(config: SearchConfig, finished: int = 0) -> Any:
    """The configured sampler. Constraints reach it through `trial.set_constraint` (Optuna >= 5).

    On a resumed study the seed is offset by the number of finished trials, so a resumed search does not
    replay the random draws of the first run."""
    import optuna

    s = config.sampler
    seed = None if s.seed is None else s.seed + finished
    if s.name == "nsga2":
        kwargs = {"population_size": s.population_size} if s.population_size else {}
        return optuna.samplers.NSGAIISampler(seed=seed, **kwargs)
    if s.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, warn_independent_sampling=False)
    if s.name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.RandomSampler(seed=seed)


def open_study(config: SearchConfig) -> Any:
    """Create the study, or load it when the storage already holds one of this name (resume).

    Raises `UserError` when the storage URL cannot be opened or the stored study has other objectives."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = config.storage
    if url.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(url[len("sqlite:///"):]) or ".", exist_ok=True)
    if "://" not in url:
        raise UserError(f"storage {url!r} is not a URL; use e.g. sqlite:///path/optuna.db or "
                        "postgresql://user@host/db (or leave it out for SQLite in the run directory)")
    try:
        storage = optuna.storages.get_storage(url)
    except Exception as exc:  # SQLAlchemy / driver errors vary by backend
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"storage {url!r} cannot be opened: {first}") from None
    directions = [parse_objective(o)[0] for o in config.objectives]
    metrics = [parse_objective(o)[1] for o in config.objectives]
    probe = optuna.create_study(storage=storage, study_name=config.study_name, directions=directions,
                                load_if_exists=True)
    existing = probe.metric_names
    if [d.name.lower() for d in probe.directions] != directions or (existing and existing != metrics):
        have = existing or [d.name.lower() for d in probe.directions]
        raise UserError(f"study {config.study_name!r} in {url} was created with objectives {have}; "
                        "use another study_name or run_dir to search with different objectives")
    if not existing:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            probe.set_metric_names(metrics)
    finished = sum(1 for t in probe.get_trials(deepcopy=False) if t.state.is_finished())
    return optuna.load_study(study_name=config.study_name, storage=storage,
                             sampler=make_sampler(config, finished))

