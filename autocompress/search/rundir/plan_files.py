"""The plan files of a run directory, `plans/trial-NNNN.json`, and their repair: a file that is missing or does
not parse is rebuilt from its trial's parameters in the study and written back.

A trial's plan is `space.sample(trial)` (search/trial_book.py), a function of the trial's params alone, and the
space is a function of the config's space section and the model's inventory, which the run's identity
(search/rundir/identity.py) keeps unchanged; so `space.sample(optuna.trial.FixedTrial(trial.params))` is the plan
the trial ran, exactly (its `to_json` equal to the file the driver wrote).

`read_plan(path) -> (plan or None, why)`: why it is None ("is missing", "is not valid JSON (...)", ...).
`rebuild(path, trial, space, why) -> plan`: the plan rebuilt and written (atomically); `UserError` naming
  the file when it cannot be (e.g. its params do not fit the space, or the file cannot be written).
`plan_of(run_dir, trial, space)`: the file's plan, else the rebuilt one, with one line on stderr saying so.
`repair(run_dir, trials, space)`: on resume, every finished trial's file checked and rebuilt where needed,
  one line on stderr for them all; a file that cannot be rebuilt is named there and left to `plan_of`'s
  refusal (export, report), the search goes on.
`space` is a `ConfigSpace`, or a callable returning one, called only when a file needs rebuilding.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable

from autocompress.errors import UserError
from autocompress.plan import CompressionPlan

SHOWN = 5  # plan files a repair names on its line; the rest are counted


def plan_path(run_dir: str | os.PathLike, number: int) -> Path:
    return Path(run_dir) / "plans" / f"trial-{number:04d}.json"


def read_plan(path: Path) -> tuple[CompressionPlan | None, str]:
    """(the plan in `path`, "") or (None, why it has none: "is missing", "is not valid JSON (...)", ...)."""
    if not path.is_file():
        return None, "is missing"
    try:
        return CompressionPlan.load(str(path)), ""
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    except UserError as exc:  # "<path>: not valid JSON (...)" / "<path>: not a compression plan (...)"
        text = str(exc)
        return None, "is " + (text[len(str(path)) + 2:] if text.startswith(f"{path}: ") else text)


def rebuild(path: Path, trial: Any, space: Any, why: str) -> CompressionPlan:
    """The plan of `trial` (a FrozenTrial) sampled again from its params, written to `path` (module
    docstring). `UserError` naming `path` and `why` when it cannot be rebuilt or written."""
    import optuna

    try:
        plan = _space(space).sample(optuna.trial.FixedTrial(dict(trial.params)))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            plan.save(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except Exception as exc:  # UserError (no model here), Optuna's ValueError (params of another space), OSError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise UserError(f"{path} {why} and cannot be rebuilt from trial {trial.number}'s parameters in the study "
                        f"({reason}); restore the file from a copy of the run directory") from None
    return plan


def plan_of(run_dir: str | os.PathLike, trial: Any, space: Any) -> CompressionPlan:
    """The plan `trial` ran: its file's, else rebuilt (`rebuild`), saying so on stderr in one line."""
    path = plan_path(run_dir, trial.number)
    plan, why = read_plan(path)
    if plan is None:
        plan = rebuild(path, trial, space, why)
        print(f"{path} {why}: rebuilt it from trial {trial.number}'s parameters in the study", file=sys.stderr)
    return plan


def repair(run_dir: str | os.PathLike, trials: Iterable[Any], space: Any) -> list[int]:
    """Rebuild the plan file of each finished trial of `trials` that is missing or does not parse (a trial
    that sampled a plan: params, or user attr `plan_layers`). One line on stderr names them. Returns the
    numbers rebuilt."""
    done, failed = [], []
    for t in trials:
        if not t.state.is_finished() or not (t.params or "plan_layers" in t.user_attrs):
            continue
        path = plan_path(run_dir, t.number)
        plan, why = read_plan(path)
        if plan is not None:
            continue
        try:
            rebuild(path, t, space, why)
            done.append((t.number, f"{path.name} {why}"))
        except UserError as exc:
            failed.append(str(exc))
    if done:
        names = "; ".join(text for _, text in done[:SHOWN]) + (f"; and {len(done) - SHOWN} more" if
                                                                 len(done) > SHOWN else "")
        print(f"{Path(run_dir) / 'plans'}: rebuilt {len(done)} plan file{'s' * (len(done) > 1)} from the "
              f"trial parameters in the study ({names})", file=sys.stderr)
    if failed:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        print(f"warning: {failed[0]}{more}", file=sys.stderr)
    return [n for n, _ in done]


def _space(space: Any) -> Any:
    return space if hasattr(space, "sample") else space()
