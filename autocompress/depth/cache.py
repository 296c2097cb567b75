"""Block Influence computed once per run and kept in the run directory, like the sensitivity measurement.

`resolve_order(config)` is what a search calls before it starts (before the run's config.yaml is written): for a
`space.depth` in mode "influence" without an `order`, it reads `RUN_DIR/block_influence.json` when its
fingerprint matches (model, data.calibration, data.max_length, VERSION), else loads the model, scores its
blocks on the data.calibration texts (`influence.block_influence`) and writes the file. It returns the config
with `space.depth.order` filled in (least influential first), so config.yaml, the MLflow parent run's params
(`space.depth.order`) and every space built from the run's config drop the same blocks for the same
`depth.drop`. Any other config comes back unchanged.

File `RUN_DIR/block_influence.json`: {"fingerprint", "scores" (BI per block, in block order), "order", "tokens",
"seconds"}.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

FILE = "block_influence.json"
VERSION = 1


def fingerprint(config: Any) -> str:
    """What the scores depend on: the model, the calibration texts and their length."""
    keys = {"model": config.model.model_dump(mode="json"), "calibration": config.data.calibration.model_dump(mode="json"),
            "max_length": config.data.max_length, "version": VERSION}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def measure(config: Any) -> dict[str, Any]:
    """{"scores", "order", "tokens", "seconds"} of the config's model on its data.calibration texts (CPU)."""
    from autocompress.calibration import calibration_texts
    from autocompress.data import make_batches
    from autocompress.depth.influence import block_influence, influence_order
    from autocompress.errors import UserError
    from autocompress.loading import load_model

    t0 = time.perf_counter()
    m, d = config.model, config.data
    loaded = load_model(m.name, task=m.task, trust_remote_code=m.trust_remote_code)
    if loaded.tokenizer is None or not loaded.info.block_prefix:
        raise UserError("space.depth: Block Influence needs a tokenizer and repeated blocks; give space.depth.order "
                        "or mode: switches")
    texts = calibration_texts(loaded.tokenizer, d.calibration.source, d.calibration.n, d.calibration.seed,
                              d.max_length, 0)
    batches = make_batches(loaded.tokenizer, texts, batch_size=min(d.batch_size, 16), max_length=d.max_length)
    scores = block_influence(loaded.model, batches, loaded.info.block_prefix)
    return {"scores": scores, "order": influence_order(scores),
            "tokens": int(sum(int(b["attention_mask"].sum()) for b in batches)),
            "seconds": round(time.perf_counter() - t0, 3)}


def load_or_measure(config: Any, run_dir: str | Path,
                    say: Callable[[str], None] | None = None) -> tuple[dict[str, Any], bool]:
    """(the file's contents, measured_now): the cached scores when the fingerprint matches, else new ones (saved).
    `say` (optional) gets one line before a measurement starts and one when it ends."""
    path = Path(run_dir) / FILE
    key = fingerprint(config)
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("fingerprint") == key and isinstance(cached.get("order"), list):
                return cached, False
        except (OSError, ValueError):
            pass  # unreadable: measure again
    if say is not None:
        say(f"measuring Block Influence on the calibration texts (once per run, kept in {path})")
    data = {"fingerprint": key, **measure(config)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    if say is not None:
        say(f"Block Influence: least important blocks first {data['order'][:8]} ({data['seconds']:.0f} s)")
    return data, True


def resolve_order(config: Any, say: Callable[[str], None] | None = None) -> Any:
    """`config` with `space.depth.order` from Block Influence (module docstring), or `config` itself. `say`
    reports a measurement (`load_or_measure`)."""
    depth = config.space.depth
    if depth is None or depth.mode != "influence" or depth.order is not None:
        return config
    data, _ = load_or_measure(config, config.run_dir, say)
    space = config.space.model_copy(update={"depth": depth.model_copy(update={"order": list(data["order"])})})
    return config.model_copy(update={"space": space})
