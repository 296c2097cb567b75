"""Two real (tiny) searches, run once per session and shared by the report tests.

`study2`: fidelity + size_mb, constraint fidelity >= 0.9995 (the 2-bit and low-rank baselines break it).
`study3`: fidelity + latency_ms (cpu-local profile) + size_mb, low-rank in the space too, constraint
size_mb <= 8.1 (the lighter structured baseline is pruned by its size before any model work).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autocompress.config import SearchConfig
from autocompress.search.driver import run_search

SPACE = {"quantize": {"bits": [2, 4, 8, None], "group_size": [16, 64], "act_bits": [8, None]},
         "structured": {"sparsity": [0.0, 0.25, 0.5]}}
LOWRANK = {"rank": [None, 0.5, 0.25], "method": ["svd"]}  # SVDs are the slow part: study3 only


def make_config(tmp: Path, name: str, **extra) -> SearchConfig:
    data = {"model": {"name": "random:bert"}, "data": {"calibration": {"n": 8}, "evaluation": {"n": 16}},
            "space": SPACE, "budget": {"n_trials": 10}, "sampler": {"name": "random", "seed": 0},
            "tracking": {"uri": "none"}, "run_dir": str(tmp / name), "study_name": name}
    data.update(extra)
    return SearchConfig.from_dict(data).resolved(tmp)


@pytest.fixture(scope="session")
def study2(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report2")
    config = make_config(tmp, "two", constraints=["fidelity >= 0.9995"])
    run_search(config, show_progress=False)
    return Path(config.run_dir)


@pytest.fixture(scope="session")
def study3(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report3")
    config = make_config(tmp, "three", objectives=["maximize fidelity", "minimize latency_ms", "minimize size_mb"],
                         constraints=["size_mb <= 8.1"], target={"profile": "cpu-local"},
                         space={**SPACE, "lowrank": LOWRANK})
    run_search(config, show_progress=False)
    return Path(config.run_dir)
