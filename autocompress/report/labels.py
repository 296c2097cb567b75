"""What a metric is called on an axis or in a table header, with its unit, and how its values are printed.

`axis_label("size_mb", target)` -> "packed size (MB)"; latency names the device profile and workload it
was priced for ("latency (ms, predicted, cpu-local, batch 1, seq 128)"), because a latency without them
means nothing. `column_label` is the table-header form: the metric key first, then the unit.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# metric -> (name on an axis, unit); latency_ms's unit is built from the target
METRIC_LABELS: dict[str, tuple[str, str]] = {
    "fidelity": ("fidelity", "cosine to the original, 1 = same"),
    "fidelity_min": ("worst-case fidelity", "lowest cosine to the original, 1 = same"),
    "topk_agreement": ("top-k agreement", "share of neighbours kept, 1 = same"),
    "perplexity": ("perplexity", "lower is better"),
    "perplexity_ratio": ("perplexity ratio", "compressed / original, 1 = same"),
    "nll": ("negative log-likelihood", "nats per token"),
    "accuracy": ("accuracy", "share of labels right"),
    "kl": ("next-token KL divergence", "nats per token, 0 = same"),
    "kl_p99": ("99th-percentile next-token KL", "nats, 0 = same"),
    "top1_agreement": ("top-1 agreement", "share of next tokens predicted as the original, 1 = same"),
    "size_mb": ("packed size", "MB"),
    "size_ratio": ("size ratio", "packed / original"),
    "latency_ms": ("latency", "ms"),
    "memory_mb": ("memory", "MB, packed weights + KV cache"),
    "size_coded_mb": ("entropy-coded size", "MB, packed tensors zstd-coded"),
}
# metrics that sit near 1 and differ in the 4th-6th digit: printed with more digits
_NEAR_ONE = {"fidelity", "fidelity_min", "topk_agreement", "accuracy", "perplexity_ratio", "top1_agreement"}


def latency_unit(target: Any) -> str:
    """'ms, predicted, cpu-local, batch 1, seq 128' (measured when the latency model times real kernels)."""
    if target is None:
        return "ms"
    how = "measured" if target.latency_model == "measured" else "predicted"  # roofline and table predict
    profile = target.profile
    if profile.endswith((".yaml", ".yml")):
        profile = Path(profile).stem
    text = f"ms, {how}, {profile}, batch {target.batch}, seq {target.seq_len}"
    return text + (", decode" if target.mode == "decode" else "")


def unit(metric: str, target: Any = None) -> str:
    if metric == "latency_ms":
        return latency_unit(target)
    if metric == "memory_mb" and target is not None:
        return f"MB, packed weights + KV cache at batch {target.batch}, seq {target.seq_len}"
    return METRIC_LABELS.get(metric, (metric, ""))[1]


def axis_label(metric: str, target: Any = None) -> str:
    """The human name with its unit in brackets, e.g. 'packed size (MB)'."""
    name = METRIC_LABELS.get(metric, (metric, ""))[0]
    u = unit(metric, target)
    return f"{name} ({u})" if u else name


def column_label(metric: str, target: Any = None) -> str:
    """The metric key with its unit, for table headers: 'size_mb (MB)'."""
    u = unit(metric, target)
    return f"{metric} ({u})" if u else metric


def fmt(metric: str, value: float | None) -> str:
    """A metric value as text: 6 significant digits for metrics near 1, 4 for the others."""
    if value is None:
        return "-"
    if metric not in _NEAR_ONE:
        return f"{value:.4g}"
    text = f"{value:.6g}"
    return f"{value:.8g}" if text == "1" and value != 1 else text  # 0.99999994, not a rounded "1"


def natural_key(name: str) -> tuple:
    """Sort key that orders 'layer.2' before 'layer.10' (digit runs compare as numbers)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", name) if part != "")
