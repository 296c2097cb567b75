"""`one_transaction(trial)`: a trial's params and attributes written to an RDB storage in one transaction.

Optuna's RDBStorage commits every `suggest_*`, `set_user_attr` and `set_constraint` on its own: a look-up of
the trial row, an insert and a commit, about 0.9 ms each on SQLite here. A quickstart plan has ~50 params
and the driver sets ~10 attributes per trial, so these single-row commits were the largest part of the local
backend's overhead per trial (benchmarks/orchestration.py). Optuna has no batched write (its pull request
#5665, a bulk `set_trial_user_attrs`, was closed unmerged), so inside the block this module holds the writes
of that one trial and, on leaving it, inserts them in one session with Optuna's own table models: the same
rows, the same checks (the trial still updatable, each param's distribution compatible with the study's),
one commit.

Contract:
- Only the block's trial is affected, and only writes made through it (`trial.suggest_*`, `set_user_attr`,
  `set_constraint`); reads through the trial see the held values. Writes made through the study or the
  storage itself go straight through, as before.
- The writes reach the storage when the block ends, also when it ends by an exception (nothing set is lost);
  another process sees them from then on, not while the block runs. A param whose distribution does not fit
  the study's earlier one raises Optuna's ValueError then (not at the `suggest_*`); on an RDB storage none of
  the block's writes land then.
- On any storage other than Optuna's cached RDBStorage (journal file, Redis, in-memory), or should a later
  Optuna rename the internals used here (`optuna_internals()` is None then), each held write is replayed through the
  storage's public method, one call each: the same result, no faster.
"""

from __future__ import annotations

import functools
import json
from contextlib import contextmanager
from typing import Any, Iterator


@functools.cache
def optuna_internals() -> tuple[Any, ...] | None:
    """(RDBStorage, _CachedStorage, Optuna's table models, its session context manager): the internals the
    one-transaction write needs, or None when this Optuna lacks any of them (then writes are replayed)."""
    try:
        from optuna.storages import RDBStorage, _CachedStorage
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
        from sqlalchemy.orm import configure_mappers
    except ImportError:
        return None
    configure_mappers()  # creates the backrefs (TrialModel.user_attributes, ...) checked below
    needed = ((models, "TrialModel"), (models, "TrialParamModel"), (models, "TrialUserAttributeModel"),
              (models, "TrialSystemAttributeModel"), (RDBStorage, "_set_trial_param_without_commit"),
              (RDBStorage, "check_trial_is_updatable"), (models.TrialModel, "user_attributes"),
              (models.TrialModel, "system_attributes"))
    if not all(hasattr(obj, name) for obj, name in needed):
        return None
    return RDBStorage, _CachedStorage, models, _create_scoped_session


def _one_transaction_possible(storage: Any) -> bool:
    """`storage` is Optuna's `_CachedStorage` over an `RDBStorage`, with the instance state `_write_rdb` uses."""
    parts = optuna_internals()
    return parts is not None and isinstance(storage, parts[1]) \
        and isinstance(getattr(storage, "_backend", None), parts[0]) \
        and all(hasattr(storage, n) for n in ("_lock", "_studies", "_trial_id_to_study_id_and_number"))


class _HeldWrites:
    """Stands in for the storage of one `optuna.Trial` while the block runs: holds that trial's writes,
    passes everything else to the storage."""

    def __init__(self, storage: Any, trial_id: int):
        self._storage, self._trial_id = storage, trial_id
        self.params: list[tuple[str, float, Any]] = []
        self.user_attrs: dict[str, Any] = {}
        self.system_attrs: dict[str, Any] = {}

    def _held(self, trial_id: int) -> bool:
        return trial_id == self._trial_id

    def set_trial_param(self, trial_id: int, name: str, value: float, distribution: Any) -> None:
        if not self._held(trial_id):
            return self._storage.set_trial_param(trial_id, name, value, distribution)
        self.params.append((name, value, distribution))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        if not self._held(trial_id):
            return self._storage.set_trial_user_attr(trial_id, key, value)
        json.dumps(value)  # unserializable values fail here, at the call that set them, as they would unheld
        self.user_attrs[key] = value

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if not self._held(trial_id):
            return self._storage.set_trial_system_attr(trial_id, key, value)
        json.dumps(value)
        self.system_attrs[key] = value

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        attrs = self._storage.get_trial_system_attrs(trial_id)
        return {**attrs, **self.system_attrs} if self._held(trial_id) else attrs

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        attrs = self._storage.get_trial_user_attrs(trial_id)
        return {**attrs, **self.user_attrs} if self._held(trial_id) else attrs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def write(self) -> None:
        """Send the held writes to the storage: one transaction when it is a cached RDBStorage."""
        if not (self.params or self.user_attrs or self.system_attrs):
            return
        if _one_transaction_possible(self._storage):
            self._write_rdb()
        else:
            self._replay()

    def _replay(self) -> None:
        s, tid = self._storage, self._trial_id
        for name, value, distribution in self.params:
            s.set_trial_param(tid, name, value, distribution)
        for key, value in self.user_attrs.items():
            s.set_trial_user_attr(tid, key, value)
        for key, value in self.system_attrs.items():
            s.set_trial_system_attr(tid, key, value)

    def _write_rdb(self) -> None:
        from optuna import distributions as D

        _, _, models, scoped_session = optuna_internals()
        cached, tid = self._storage, self._trial_id
        rdb = cached._backend
        with cached._lock:
            study_id, _ = cached._trial_id_to_study_id_and_number[tid]
            known = cached._studies[study_id].param_distribution
            with scoped_session(rdb.scoped_session, True) as session:
                row = models.TrialModel.find_or_raise_by_id(tid, session)
                rdb.check_trial_is_updatable(tid, row.state)
                for name, value, distribution in self.params:
                    if name in known:  # the study has this param: check it here, insert without a look-up
                        D.check_distribution_compatibility(known[name], distribution)
                        session.add(models.TrialParamModel(
                            trial_id=tid, param_name=name, param_value=value,
                            distribution_json=D.distribution_to_json(distribution)))
                    else:  # a new name: Optuna's own write looks up the study's earlier records of it
                        rdb._set_trial_param_without_commit(session, tid, name, value, distribution, None)
                for model, attrs, rows in ((models.TrialUserAttributeModel, self.user_attrs, row.user_attributes),
                                           (models.TrialSystemAttributeModel, self.system_attrs,
                                            row.system_attributes)):
                    existing = {r.key: r for r in rows}  # one read each; only this driver writes this trial
                    for key, value in attrs.items():
                        if key in existing:
                            existing[key].value_json = json.dumps(value)
                        else:
                            session.add(model(trial_id=tid, key=key, value_json=json.dumps(value)))
            for name, _, distribution in self.params:
                known.setdefault(name, distribution)


@contextmanager
def one_transaction(trial: Any) -> Iterator[None]:
    """Within the block, `trial`'s (an `optuna.Trial`) params, user and system attributes are held and
    written together when it ends (see the module's contract)."""
    held = _HeldWrites(trial.storage, trial._trial_id)
    trial.storage = held
    try:
        yield
    finally:
        trial.storage = held._storage
        held.write()
