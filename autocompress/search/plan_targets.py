"""What the config's `target` prices a plan at from the plan alone, before any model work: the latency
model and workload of an analytic latency, and the point (batch, sequence length, dtype) of `memory_mb`."""

from __future__ import annotations

from typing import Any

from autocompress.config import SearchConfig


def plan_latency_model(config: SearchConfig) -> tuple[Any, Any] | None:
    """(latency model, workload) for a target priced from the plan alone; None without a target or when
    the latency is measured on the workers."""
    t = config.target
    if t is None or t.model_name == "measured":
        return None
    from autocompress.evaluators.latency import LATENCY_MODELS, Workload
    from autocompress.hardware import load_profile

    return LATENCY_MODELS.get(t.model_name)(load_profile(t.profile)), Workload(t.batch, t.seq_len, t.mode)


def memory_target(config: SearchConfig) -> tuple[int, int, str] | None:
    """(batch, seq_len, deployment dtype) the `memory_mb` metric is computed at: the target's; None without one."""
    t = config.target
    if t is None:
        return None
    from autocompress.hardware import load_profile

    return t.batch, t.seq_len, load_profile(t.profile).dtype
