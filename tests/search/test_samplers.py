"""samplers.py: NSGA-II crosses over only the parameters every parent has, so a sweep's processes, whose
views of the study differ for a moment, never fail in the crossover of a define-by-run space."""

import optuna
from optuna.distributions import CategoricalDistribution as Cat

from autocompress.search.samplers import SharedStudyNSGAIISampler

SPACE = {"u.bits": Cat([4, None]), "u.group_size": Cat([32, 128]), "v.bits": Cat([4, 8])}


def _objective(trial):
    bits = trial.suggest_categorical("u.bits", [4, None])
    group = trial.suggest_categorical("u.group_size", [32, 128]) if bits is not None else 0
    other = trial.suggest_categorical("v.bits", [4, 8])
    size = (0 if bits is None else 4 + group / 128) + other
    return size, 1.0 / (1 + size)  # smaller is worse: every size is on the front


def test_a_parent_without_a_conditional_parameter_is_crossed_over_without_it():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = SharedStudyNSGAIISampler(population_size=4, seed=0)
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=sampler)
    study.optimize(_objective, n_trials=16)
    trial = study._storage.get_trial(study.ask()._trial_id)
    parents = sampler.get_parent_population(study, sampler.get_trial_generation(study, trial))
    assert parents and any("u.group_size" not in p.params for p in parents)
    # the view of a process that intersected the completed trials before such a parent completed
    stock = optuna.samplers.NSGAIISampler.sample_relative
    failures = 0
    for _ in range(20):
        try:
            stock(sampler, study, trial, SPACE)
        except KeyError:
            failures += 1
        child = sampler.sample_relative(study, trial, SPACE)
        # (NSGA-II's mutation leaves some parameters out too: those are then sampled independently)
        assert set(child) <= {"u.bits", "v.bits"} and all(child[k] in SPACE[k].choices for k in child)
    assert failures > 0  # the stock sampler does fail on this view: the test exercises the race
