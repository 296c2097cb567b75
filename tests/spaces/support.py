"""Helpers of the ConfigSpace tests: a space section from a few sections (else every layer technique), the
trials a random sampler draws from a space, and a distillation section."""

from __future__ import annotations

import optuna

from autocompress.config import SpaceSection

FULL = {"quantize": {"bits": [4, 8, None], "group_size": [32, None], "symmetric": [True, False],
                     "method": ["rtn", "gptq", "kmeans"], "act_bits": [None, 8]},
        "prune": {"sparsity": [0.0, 0.25, 0.5], "pattern": ["unstructured", "2:4"],
                  "method": ["magnitude", "wanda"]},
        "structured": {"sparsity": [0.0, 0.25, 0.5]},
        "lowrank": {"rank": [None, 0.25, 0.5, 0.75, 8, 40, 1000], "method": ["svd", "whitened"]}}

DISTILL = {"steps": [0, 100, 200], "lr": [1e-4, 3e-4], "temperature": [2.0], "alpha": [1.0], "beta": [0.0, 1.0],
           "layers": ["all", "last"], "batch_size": 16, "max_length": 128, "eval_every": 25}


def space(share="group", **sections):
    return SpaceSection.model_validate({"share": share, **(sections or FULL)})


def trials(cs, n=200, seed=0):
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(n):
        trial = study.ask()
        plan = cs.sample(trial)
        study.tell(trial, [0.0, 0.0])
        yield trial, plan
