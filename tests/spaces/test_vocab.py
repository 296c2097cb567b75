"""space.vocab: the share drawn into the plan's VocabPlan (1.0 first: no plan), uniform baselines per share
below 1 that reproduce from their params, and the refusals (a share outside (0, 1])."""

from __future__ import annotations

import optuna
import pytest
from pydantic import ValidationError

from autocompress.config import SpaceSection
from autocompress.loading import meta_inventory
from autocompress.spaces import ConfigSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def llama():
    return meta_inventory("random:llama")


def test_draws_the_share(llama):
    cs = ConfigSpace(SpaceSection.model_validate({"vocab": {"keep": [0.25, 1.0, 0.5]}}), llama)
    assert cs.vocab.keep == [1.0, 0.5, 0.25]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        plan = cs.sample(trial)
        keep = trial.params["vocab.keep"]
        assert (plan.vocab is None) == (keep == 1.0)
        assert plan.vocab is None or (plan.vocab.keep == keep and plan.flatten()["vocab.keep"] == keep)
        seen.add(keep)
    assert seen == {1.0, 0.5, 0.25}


def test_uniform_baselines_reproduce_from_their_params(llama):
    cs = ConfigSpace(SpaceSection.model_validate({"quantize": {"bits": [8, None]}, "vocab": {"keep": [1.0, 0.5]}}),
                     llama)
    plans, params = cs.uniform_plans(), cs.uniform_params()
    assert set(plans) == {"quantize bits=8", "vocab keep=0.5"}
    assert plans["vocab keep=0.5"].vocab.keep == 0.5 and not plans["vocab keep=0.5"].layers
    assert params["quantize bits=8"]["vocab.keep"] == 1.0  # a baseline of another technique keeps every token
    for label, p in params.items():
        trial = optuna.trial.FixedTrial(p)
        assert cs.sample(trial) == plans[label]


def test_a_constant_share_draws_nothing(llama):
    cs = ConfigSpace(SpaceSection.model_validate({"vocab": {"keep": [0.5]}}), llama)
    trial = optuna.create_study().ask()
    assert cs.sample(trial).vocab.keep == 0.5 and "vocab.keep" not in trial.params


@pytest.mark.parametrize("keep", [[0.0], [1.5], [0.5, -1]])
def test_bad_shares_are_refused(keep):
    with pytest.raises(ValidationError, match=r"each keep must be a share of the vocabulary in \(0, 1\]"):
        SpaceSection.model_validate({"vocab": {"keep": keep}})
