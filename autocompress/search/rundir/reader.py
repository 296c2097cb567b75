"""A search's run directory read back: its config, its Optuna study, the finished trials, the front, the plans.

A run directory is what `run_search` writes (`config.yaml`, `plans/trial-NNNN.json`, `pareto.md`,
`summary.json`) plus the Optuna study its config names (by default `optuna.db` inside it). `export`,
`report` and `ui` start from one. Reading never changes the study.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autocompress.config import SearchConfig, parse_objective
from autocompress.errors import UserError
from autocompress.plan import CompressionPlan
from autocompress.search.pareto import PickRule, default_rule, metrics_of
from autocompress.search.rundir.trial_result import is_feasible
from autocompress.search.storage import close_storage, display_url, open_storage


@dataclass
class RunDir:
    """An opened run directory. Build it with `RunDir.open(path)`."""

    path: Path
    config: SearchConfig
    study: Any  # optuna.Study

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """Read `path/config.yaml` and load the study it names. `UserError` if `path` is not a run directory,
        its study cannot be found in the storage, or config.yaml names another model, task, data or space
        than the study recorded (search/rundir/identity.py)."""
        import optuna

        root = Path(path).resolve()
        cfg_file = root / "config.yaml"
        if not root.is_dir():
            raise UserError(f"run directory {str(path)!r} does not exist; give the run_dir of a search")
        if not cfg_file.is_file():
            raise UserError(f"{str(path)!r} is not a run directory (no config.yaml); give the run_dir of a search")
        config = SearchConfig.from_yaml(cfg_file)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(config.storage)  # any URL form a search takes (journal, redis too); UserError
        try:
            study = _load_study(config, storage, path)
            from autocompress.search.rundir.identity import ATTR, check, run_identity

            check(study.user_attrs.get(ATTR), run_identity(config))  # config.yaml names what the run searched
        except BaseException:
            close_storage(storage)  # a refused run leaves no -wal / -shm files beside its SQLite study
            raise
        return cls(root, config, study)

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """[(direction, metric), ...] in the study's order."""
        return [parse_objective(o) for o in self.config.objectives]

    @property
    def trials(self) -> list[Any]:
        """Every trial of the study (frozen), by number."""
        return sorted(self.study.get_trials(deepcopy=False), key=lambda t: t.number)

    def completed(self) -> list[Any]:
        """The COMPLETE trials (those with objective values), by number."""
        return [t for t in self.trials if t.state.name == "COMPLETE"]

    def front(self) -> list[Any]:
        """The feasible Pareto trials (the study's constraints hold), by number; each plan once (a repeat of an
        earlier trial's plan, `is_repeat`, is left out)."""
        from autocompress.search.study import pareto_front

        return pareto_front(self.study) if self.completed() else []

    def baselines(self) -> list[Any]:
        """The COMPLETE uniform-baseline trials (user attr `baseline` names them), by number."""
        return [t for t in self.completed()
                if "baseline" in t.user_attrs and not t.user_attrs["baseline"].startswith("sensitivity")]

    def seeded(self) -> list[Any]:
        """The COMPLETE trials seeded from per-unit sensitivity (user attr `baseline` "sensitivity drop<=t")."""
        return [t for t in self.completed() if t.user_attrs.get("baseline", "").startswith("sensitivity")]

    def is_feasible(self, trial: Any) -> bool:
        """True when every constraint set on the trial (`trial.set_constraint`) is met: value <= 0."""
        return is_feasible(trial)

    def choose(self, trial: int | None = None, pick: str | None = None) -> Any:
        """The trial to export: number `trial` (any COMPLETE trial), else the one `pick` selects from the
        feasible front, else the config's own `pick` rule (or its first objective). `UserError` when there
        is no finished trial, the number is unknown or not COMPLETE, the rule names a metric no finished trial
        measured, or the rule matches nothing."""
        done = self.completed()
        if not done:
            states = ", ".join(sorted({t.state.name for t in self.trials})) or "no trials at all"
            raise UserError(f"run directory {str(self.path)!r} has no finished trial ({states}); run or resume "
                            f"the search first: autocompress search {self.path / 'config.yaml'}")
        if trial is not None:
            match = next((t for t in self.trials if t.number == trial), None)
            if match is None:
                raise UserError(f"--trial {trial}: the study has trials 0..{self.trials[-1].number}; "
                                f"pick one of the Pareto trials: {self.front_numbers()}")
            if match.state.name != "COMPLETE":
                raise UserError(f"--trial {trial} ended {match.state.name}, so it has no measured model; "
                                f"pick a COMPLETE trial, e.g. one of the Pareto trials {self.front_numbers()}")
            return match
        text = pick or self.config.pick
        rule = PickRule.parse(text) if text else default_rule(self.config.objectives)
        measured = sorted(set().union(*(metrics_of(t) for t in done)))
        unmeasured = [m for m in rule.metrics if m not in measured]
        if unmeasured:
            raise UserError(f"pick rule {str(rule)!r}: this study did not measure {unmeasured[0]!r}; it measured "
                            f"{', '.join(measured)}; pick by one of those")
        front = self.front()
        chosen = rule.choose(front)
        if chosen is None:
            ranges = _ranges(front)
            raise UserError(f"pick rule {str(rule)!r} matches no feasible Pareto trial (the front spans {ranges}); "
                            f"relax its condition or give --trial N")
        return chosen

    def front_numbers(self) -> list[int]:
        return [t.number for t in self.front()]

    def plan(self, number: int) -> CompressionPlan:
        """The plan trial `number` ran, from `plans/trial-NNNN.json`; a file that is missing or does not parse
        is rebuilt from the trial's params and written back, with one line on stderr (search/rundir/plan_files.py).
        `UserError` naming the file when it cannot be rebuilt (e.g. the model is not on this machine)."""
        from autocompress.search.rundir.plan_files import plan_of

        trial = next((t for t in self.trials if t.number == number), None)
        if trial is None:
            raise UserError(f"trial {number} is not in study {self.config.study_name!r}")
        return plan_of(self.path, trial, self.space)

    def space(self) -> Any:
        """The run's search space (`ConfigSpace`) over the model's inventory, built from its config alone."""
        from autocompress.loading import meta_inventory
        from autocompress.spaces import ConfigSpace

        m = self.config.model
        info = meta_inventory(m.name, task=m.task, trust_remote_code=m.trust_remote_code)
        return ConfigSpace(self.config.space, info, self.config.target_format)


def _ranges(trials: list[Any]) -> str:
    """'fidelity 0.91..0.999, size_mb 5.1..22' over the trials' metrics (for error messages)."""
    if not trials:
        return "no trials: every finished trial breaks a constraint"
    keys = sorted(set.intersection(*(set(metrics_of(t)) for t in trials)))
    parts = []
    for k in keys:
        vals = [metrics_of(t)[k] for t in trials]
        parts.append(f"{k} {min(vals):.4g}..{max(vals):.4g}")
    return ", ".join(parts[:4])


def _load_study(config: SearchConfig, storage: Any, path: str | Path) -> Any:
    """The study `config` names in `storage`; `UserError` when it is missing or the storage fails."""
    import optuna

    try:
        return optuna.load_study(study_name=config.study_name, storage=storage)
    except KeyError:
        raise UserError(f"study {config.study_name!r} is not in {display_url(config.storage)}; was the search "
                        f"started from this run directory?") from None
    except Exception as exc:  # the storage's own errors (SQLAlchemy, redis, ...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"storage {display_url(config.storage)!r} of run directory {str(path)!r} cannot be opened: "
                        f"{first}") from None
