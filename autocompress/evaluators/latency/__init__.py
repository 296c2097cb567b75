"""Hardware latency models: `roofline`, `table`, `measured`, registered in `LATENCY_MODELS`."""

from autocompress.evaluators.latency import measured, roofline, table  # noqa: F401  (register)
from autocompress.evaluators.latency._base import (LATENCY_MODELS, LatencyModel, LatencyReport, Op, Workload,
                                                   plan_ops, time_ms)

__all__ = ["LATENCY_MODELS", "LatencyModel", "LatencyReport", "Op", "Workload", "plan_ops", "time_ms"]
