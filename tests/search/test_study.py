"""study.py: genetic samplers see the enqueued plans (assign_generation)."""

from __future__ import annotations

import optuna

from autocompress.search.study import assign_generation


def _run(study: optuna.Study, n: int, fix: bool) -> None:
    for _ in range(n):
        trial = study.ask()
        if fix:
            assign_generation(study, trial)
        x, y = trial.suggest_int("x", 0, 9), trial.suggest_int("y", 0, 9)
        study.tell(trial, [x + y, x - y])


def _generations(study: optuna.Study) -> list[int | None]:
    key = "NSGAIISampler:generation"
    return [t.system_attrs.get(key) for t in study.trials]


def test_enqueued_trials_join_a_generation_and_become_parents() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for fix in (False, True):
        sampler = optuna.samplers.NSGAIISampler(population_size=4, seed=0)
        study = optuna.create_study(directions=["minimize", "maximize"], sampler=sampler)
        for x in range(4):
            study.enqueue_trial({"x": x, "y": 9 - x})
        _run(study, 10, fix)
        gens = _generations(study)
        if not fix:  # the Optuna behaviour the fix is for: enqueued trials get no generation
            assert gens[:4] == [None] * 4
            continue
        assert gens[:4] == [0, 0, 0, 0]  # the 4 enqueued trials fill generation 0 ...
        assert all(g is not None and g >= 1 for g in gens[4:8])  # ... so the next sampled ones are its children
        assert [t.number for t in sampler.get_population(study, 0)] == [0, 1, 2, 3]


def test_non_genetic_sampler_untouched() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    assign_generation(study, trial)
    assert study._storage.get_trial(trial._trial_id).system_attrs == {}
