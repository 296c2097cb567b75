"""Early stopping of bad trials with Optuna's pruners, for multi-objective studies.

Optuna's `Trial.report` / `should_prune` refuse multi-objective studies, and a search's study is one. So a
search with a pruner (`pruner.name` other than none) keeps a companion single-objective study in the same
storage, named `<study_name>:pruning`, whose direction is that of the pruner's quality metric (fidelity and
accuracy maximize, perplexity minimize). Contract:
  - the driver asks one companion trial for every main trial it sends to a worker (`PruningStudy.ask`) and
    ends it with the main trial: COMPLETE with the final quality, PRUNED, or FAIL (`PruningStudy.tell`);
    its user attr "trial" is the main trial's number;
  - the worker (`WorkerPruning`, one per worker process: in the driver, the local child process or a Ray
    actor) opens the companion study from the storage URL with the configured pruner once, and for each
    trial reports its quality at step 0 (on `subset_size` of the evaluation texts, right after the plan is
    applied) and at each `distill.eval_every` distillation step (on the same subset); it stops the trial
    when `should_prune()` says so. A worker that cannot open the storage warns once and runs unpruned.
Without a pruner none of this exists: no companion study, no subset evaluation.
"""

from __future__ import annotations

import warnings
from typing import Any

from autocompress.config import SearchConfig
from autocompress.objectives import quality_metric, threshold_bounds

SUFFIX = ":pruning"


def enabled(config: SearchConfig) -> bool:
    return config.pruner.name != "none"


def subset_size(n: int, share: float) -> int:
    """How many of `n` evaluation texts the intermediate steps use: `share` of them, at least 8 (or all)."""
    return min(n, max(8, int(round(n * share))))


def make_pruner(config: SearchConfig, task: str = "embedding") -> Any:
    """The configured Optuna pruner; arguments left unset keep Optuna's defaults. `task` picks the quality
    metric whose constraint bounds the threshold pruner."""
    import optuna

    p = config.pruner
    kwargs = {k: getattr(p, k) for k in p.ARGS[p.name] if getattr(p, k) is not None}
    if p.name == "threshold":
        return optuna.pruners.ThresholdPruner(**{**kwargs, **threshold_bounds(config, task)})
    if p.name == "median":
        return optuna.pruners.MedianPruner(**kwargs)
    if p.name == "percentile":
        return optuna.pruners.PercentilePruner(**kwargs)
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**kwargs)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(**kwargs)
    return optuna.pruners.NopPruner()


class PruningStudy:
    """The driver's side: creates or loads the companion study next to the main one (`main`)."""

    def __init__(self, config: SearchConfig, main: Any, task: str) -> None:
        import optuna

        from autocompress.errors import UserError

        self.name = config.study_name + SUFFIX
        self.pruner = config.pruner.name
        self.metric, direction = quality_metric(config, task)
        self.study = optuna.create_study(storage=main._storage, study_name=self.name, direction=direction,
                                         sampler=optuna.samplers.RandomSampler(), load_if_exists=True)
        if self.study.direction.name.lower() != direction:
            raise UserError(f"study {self.name!r} was created to {self.study.direction.name.lower()} its metric; "
                            f"pruner.metric {self.metric!r} needs {direction}: use another study_name or run_dir")

    def ask(self, main_number: int) -> int:
        """A companion trial for main trial `main_number`; returns its number (what the worker is given)."""
        with warnings.catch_warnings():  # the storage's heartbeat is the main study's (liveness.py)
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = self.study.ask()
        trial.set_user_attr("trial", main_number)
        return trial.number

    def tell(self, number: int, state: str, metrics: dict[str, float]) -> None:
        """End companion trial `number` as the main trial ended: COMPLETE (with the final quality), PRUNED
        or FAIL. A COMPLETE main trial without a finite quality fails its companion."""
        import math

        import optuna

        TS = optuna.trial.TrialState
        value = metrics.get(self.metric)
        if state == "COMPLETE" and value is not None and math.isfinite(value):
            self.study.tell(number, value)
        else:
            self.study.tell(number, state=TS.PRUNED if state == "PRUNED" else TS.FAIL)


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


class WorkerPruning:
    """The worker's side, one per worker process: the companion study, opened on first use."""

    def __init__(self, config: SearchConfig, task: str) -> None:
        self.config = config
        self.metric, _ = quality_metric(config, task)
        self.task = task
        self._study: Any = None
        self._failed = False

    def _open(self) -> Any:
        if self._study is None and not self._failed:
            import optuna

            from autocompress.search.storage import display_url, open_storage

            try:
                self._study = optuna.load_study(study_name=self.config.study_name + SUFFIX,
                                                storage=open_storage(self.config.storage),
                                                sampler=optuna.samplers.RandomSampler(),
                                                pruner=make_pruner(self.config, self.task))
            except Exception as exc:  # another machine that cannot reach the storage: run unpruned
                self._failed = True
                warnings.warn(f"this worker cannot open the pruning study in {display_url(self.config.storage)!r} "
                              f"({type(exc).__name__}: {exc}); its trials run without pruning", stacklevel=3)
        return self._study

    def trial(self, number: int | None) -> "Any | None":
        """A `Reporter` for companion trial `number`, or None (no number, or the study cannot be opened)."""
        if number is None or self._open() is None:
            return None
        import optuna

        study = self._study
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        return Reporter(optuna.trial.Trial(study, trial_id), self.metric, self.config.pruner.name)


class Reporter:
    """Reports one trial's intermediate quality; `pruned` holds "at step k (metric x)" once stopped."""

    def __init__(self, trial: Any, metric: str, pruner: str) -> None:
        self.trial, self.metric, self.pruner = trial, metric, pruner
        self.pruned: str | None = None
        self.last: dict[str, float] = {}

    def __call__(self, step: int, metrics: dict[str, float]) -> bool:
        """Report `metrics[metric]` at `step`; True (stop) when the pruner prunes the trial."""
        import math

        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return False  # a NaN is the final evaluation's to judge (the trial fails)
        from autocompress.search.interrupts import deferred

        self.last = {k: float(v) for k, v in metrics.items()}
        with deferred(), warnings.catch_warnings():  # storage calls: a Ctrl-C waits for their end
            warnings.simplefilter("ignore")  # a retried trial reports its steps again: Optuna keeps the first
            self.trial.report(value, step)
            prune = self.trial.should_prune()
        if prune:
            self.pruned = f"at step {step} ({self.metric} {value:.4f})"
        return self.pruned is not None
