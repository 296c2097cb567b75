"""Hands-off: write a complete search config for a model, so `autocompress auto MODEL` needs nothing else.

The generated config is an ordinary YAML file in the run directory: the user can edit it and re-run
`autocompress search` on it.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import yaml

from autocompress.errors import UserError
from autocompress.models import ModelInfo

# objective on quality per task, the constraint it gets from --max-drop, and the pick rule's condition
_QUALITY = {
    "embedding": ("maximize fidelity", lambda drop: f"fidelity >= {1 - drop:g}"),
    "causal-lm": ("minimize kl", lambda drop: f"perplexity_ratio <= {1 + drop:g}"),
}

# Texts per task. Encoders: docstring sentences. Causal LMs: prose passages of the Python docs, cut at
# LM_MAX_LENGTH tokens; calibration.py adds passages until GPTQ has 4 tokens per input of the widest layer
# (24 full passages for a 1,536-wide FFN), and the KL is averaged over LM_EVAL_TEXTS x LM_MAX_LENGTH positions.
LM_MAX_LENGTH = 256
LM_EVAL_TEXTS = 8
LM_CALIBRATION_TEXTS = 24
_DATA = {
    "embedding": {"calibration": {"source": "builtin", "n": 64, "seed": 1},
                  "evaluation": {"source": "builtin", "n": 128, "seed": 0}},
    "causal-lm": {"calibration": {"source": "python-docs", "n": LM_CALIBRATION_TEXTS, "seed": 1,
                                  "sequential": False},
                  "evaluation": {"source": "python-docs", "n": LM_EVAL_TEXTS, "seed": 0},
                  "max_length": LM_MAX_LENGTH},
}


def auto_config(model: str, task: str, max_drop: float, n_trials: int, run_dir: str,
                backend: str = "ray", workers: int = 2, target: str | None = None,
                seed_sensitivity: bool = False, info: ModelInfo | None = None) -> dict[str, Any]:
    """A complete config for `model`: a joint space over every block Linear (grouped by role per block:
    q/k/v share a setting) of weight bits with GPTQ (8, 6, 5, 4, 3 or off), int8 activations (W8A8), each
    embedding table's bits and group size (a table tied to the LM head included: its bits go on that head),
    plus whole FFN neurons / heads removed (not grouped-query heads); quality against predicted latency on the
    `target` device profile (against packed size without a target); `max_drop` as the quality constraint and in
    the pick rule. `seed_sensitivity` adds `sensitivity: {}`: the study also starts from the plans built from
    each unit's measured sensitivity (measured once, before the first trial). The 5/6-bit and per-table choices
    and the seeding are what benchmarks/results/search_quality_gptq_embeddings_wide.md measured best.

    Every choice list runs from the mildest setting down (8 bits before 3, activations unquantized before int8),
    because the uniform baselines the study starts from follow that order: a budget of a few trials runs the
    plans most likely to meet `max_drop` first. `info` (the model's inventory) leaves out the sections the model
    cannot take (`space.embeddings` without embedding tables, `space.structured` without a prunable structure)
    and fits the group sizes to its widths (`_group_sizes`); without it every section is written, with groups
    of 32 and 128.

    `max_drop` is the quality a user can give up: 0.01 means fidelity >= 0.99 for an encoder, perplexity at
    most 1% above the original for a causal LM.

    A causal LM gets what its users read: the objective is the mean next-token KL against the original
    (`minimize kl`), with `perplexity_ratio <= 1 + max_drop` as the constraint and in the pick rule; texts are
    `python-docs` prose passages cut at `LM_MAX_LENGTH` tokens (fewer where the model's config declares a shorter
    maximum; `LM_EVAL_TEXTS` evaluated); a `target` prices one decode step (`mode: decode`, batch 1, that many
    tokens of context), since tokens per second is
    what an LLM user feels. GPTQ runs one-pass (`data.calibration.sequential: false`): sequential GPTQ takes
    each block's Hessians through the blocks quantized before it, so no layer's result can be reused by a
    trial whose earlier blocks differ and every trial quantizes the whole model again (SmolLM2-135M on two
    CPU cores, one thread per trial: about two minutes, in every trial), while one-pass results are kept per
    layer and setting in the worker's memo (the first trial takes about as long, a second one reusing them
    about 20 s). At 8 bits both gave the same KL to within 3%; set `sequential: true` in the written config
    to trade time for quality at 3 and 4 bits."""
    if task not in _QUALITY:
        raise UserError(f"auto supports embedding and causal-lm models; this one is {task!r} "
                        "(write a config by hand: see examples/README.md)")
    if not 0 < max_drop < 1:
        raise UserError(f"--max-drop {max_drop!r} must be in (0, 1), e.g. 0.01 for a 1% drop")
    objective, constraint = _QUALITY[task]
    condition = constraint(max_drop)
    cost = "latency_ms" if target else "size_mb"
    data = copy.deepcopy(_DATA[task])
    length = _lm_length(info)
    if "max_length" in data:
        data["max_length"] = length
    space: dict[str, Any] = {
        "share": "group",
        "quantize": {"bits": [8, 6, 5, 4, 3, None], "group_size": _quant_groups(info, task),
                     "method": ["gptq"], "act_bits": [None, 8] if target else [None]},
    }
    if info is None or info.embeddings:
        space["embeddings"] = {"bits": [8, 6, 5, 4, None], "group_size": _quant_groups(info, task, tables=True)}
    if info is None or any(s.kv_groups == 1 for s in info.structures.values()):
        space["structured"] = {"sparsity": [0.0, 0.125, 0.25], "method": ["wanda"]}
    config: dict[str, Any] = {
        "model": {"name": model, "task": task},
        "data": data,
        "space": space,
        "objectives": [objective, f"minimize {cost}"],
        "constraints": [condition],
        "budget": {"n_trials": n_trials},
        "sampler": {"name": "nsga2", "seed": 0, "population_size": max(8, min(32, n_trials // 4))},
        "backend": {"name": backend, "workers": workers},
        "run_dir": run_dir,
        "study_name": os.path.basename(os.path.normpath(run_dir)),
        "pick": f"minimize {cost} where {condition}",
    }
    if target:
        config["target"] = ({"profile": target, "mode": "decode", "seq_len": length, "batch": 1}
                            if task == "causal-lm" else {"profile": target})
    if seed_sensitivity:
        config["sensitivity"] = {}
    return config


def _lm_length(info: ModelInfo | None) -> int:
    """`LM_MAX_LENGTH`, or the model's declared maximum sequence length when that is shorter (GPT-2's
    position table has no row past it)."""
    limit = info.extra.get("max_positions") if info is not None else None
    return min(LM_MAX_LENGTH, limit) if isinstance(limit, int) and limit > 0 else LM_MAX_LENGTH


def _quant_groups(info: ModelInfo | None, task: str, tables: bool = False
                  ) -> list[int] | dict[int, list[int | None]]:
    """The group-size choices of the block Linears (or, with `tables`, the embedding tables): `_group_sizes`
    for every bit width, except that a causal LM's 8-bit weights keep one scale per output channel, the layout
    the int8 CPU kernels take (weight-only for a decode step, W8A8 with int8 activations): 8-bit groups cost
    more bytes and run dequantized, and per-channel 8 bits already costs the LLMs measured here little KL
    (benchmarks/results/core_llm.md). For the tables this matters where one is tied to the LM head, whose
    8-bit matmul then runs on the int8 kernel (SmolLM2 on cpu-local: 29.1 ms per decode step for uniform
    8 bits, 35.3 ms with the head in groups of 32); an untied table is one row per token either way."""
    groups = _group_sizes(info, tables=tables)
    if task != "causal-lm":
        return groups
    return {8: [None], **{b: list(groups) for b in ((6, 5, 4) if tables else (6, 5, 4, 3))}}


def _group_sizes(info: ModelInfo | None, tables: bool) -> list[int]:
    """Group sizes 32 and 128, each replaced by the largest of 64 or 32 not above it that divides every width
    the groups run along (the block Linears' inputs, or the tables' vectors) when it does not. Any group size
    is valid (the last group of a row is then shorter), but the packed export's int4 CPU kernel needs groups
    that divide the inputs: SmolLM2's hidden size 576 takes 64, not 128."""
    if info is None:
        return [32, 128]
    widths = ({e.embedding_dim for e in info.embeddings.values()} if tables
              else {info.layers[n].in_features for n in info.targets_by_default()})
    sizes: list[int] = []
    for wanted in (32, 128):
        fits = [g for g in (wanted, 64, 32) if g <= wanted and all(w % g == 0 for w in widths)]
        size = fits[0] if fits else wanted
        if size not in sizes:
            sizes.append(size)
    return sizes


def write_auto_config(config: dict[str, Any], run_dir: str) -> str:
    """Write the config as `<run_dir>/auto.yaml` (commented) and return its path."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "auto.yaml")
    header = ("# Written by `autocompress auto`. Edit it and run `autocompress search` on this file to\n"
              "# continue or change the search (every key: examples/README.md).\n")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(header + yaml.safe_dump(config, sort_keys=False))
    return path
