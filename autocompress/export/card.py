"""The model card (README.md) of an exported trial: what the model is, how it was chosen, its format and what
each engine needs to load it, the metrics measured during the search and on the directory loaded the
format's way, and for a causal LM what both models say."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from autocompress.kvcache.export import card_lines
from autocompress.vocab.export import card_lines as vocab_card_lines

CARD_NEW_TOKENS = 24  # greedy tokens per prompt in a causal LM's model card


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else str(v)


def _cell(text: str) -> str:
    """`text` as one markdown table cell: on one line, pipes escaped, empty shown as such."""
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if flat else "(nothing)"


def samples_section(samples: list[tuple[str, str, str]]) -> list[str]:
    """The model card's lines for [(prompt, original's completion, export's completion)]."""
    from autocompress.search.pareto import markdown_table

    return [
        "## Greedy completions",
        "",
        f"The first {CARD_NEW_TOKENS} new tokens, greedy, of the original model and of the model reloaded from "
        "this directory (`autocompress.evaluators.generation.generate_samples`; through the chat template when "
        "the tokenizer has one).",
        "",
        markdown_table(["prompt", "original", "this export"],
                       [[_cell(p), _cell(o), _cell(c)] for p, o, c in samples]),
    ]


def _usage(fmt: Any, out_dir: str, task: str, packed: list[str]) -> list[str]:
    """Code that loads the directory, for the card."""
    if fmt.name == "autocompress":
        return ["```python", "from autocompress.export import load_compressed",
                f"compressed = load_compressed({out_dir!r})  # kernels=True: real int8/int4 kernels",
                "model, tokenizer = compressed.model, compressed.tokenizer", "```", "",
                "Weights are stored packed (integers at their bit width with fp16 scales, sparse layers as kept "
                "values plus a bitmask or N:M indices, low-rank layers as two factors) and are dequantized on load; "
                "`kernels=True` runs the formats this machine has real kernels for" +
                (f" ({', '.join(packed)})" if packed else "") + " packed instead.", ""]
    if fmt.usage is None:
        return []
    return ["```python", *fmt.usage(out_dir, task).splitlines(), "```", ""]


def format_section(fmt: Any, result: Any, task: str) -> list[str]:
    """The card's "Format" and "Load it" sections: the format, each engine's needs, the measured match and the
    layers written other than the plan says."""
    packed = sorted(set(result.kernels.values())) if result.kernels else []
    match = result.max_relative_diff
    lines = ["## Format", "", f"`{fmt.name}`. What each engine needs to load this directory:", "", fmt.engines, "",
             f"Measured match: this directory, loaded with {fmt.loaded_by}, gives the search's metrics within a "
             f"relative difference of {match:.2g} (table below).", ""]
    if result.warnings:
        lines += ["Written other than the plan says (the values are the searched ones; only the compact storage "
                  "differs), and engine notes:", "", *[f"- {w}" for w in result.warnings], ""]
    return lines + ["## Load it", "", *_usage(fmt, result.out_dir, task, packed)]


def model_card(run: Any, trial: Any, plan: Any, result: Any, task: str, fmt: Any,
               samples: list[tuple[str, str, str]] | None = None) -> str:
    """The exported directory's README.md: what the model is, how it was chosen, its format (`fmt`, an
    `ExportFormat`), what was measured, and for a causal LM (`samples`: prompt, original's and export's greedy
    completion) what it says."""
    from autocompress.search.pareto import markdown_table

    cfg = run.config
    t = cfg.target
    target = ("none (objectives without a device)" if t is None else
              f"`{t.profile}` ({t.model_name} latency model, batch {t.batch}, sequence {t.seq_len}, {t.mode})")
    metrics = sorted(set(result.searched) | set(result.measured))
    rows = [[m, _fmt(result.searched.get(m, "-")), _fmt(result.measured.get(m, "-"))] for m in metrics]
    columns, body = plan._visible()
    size_note = (f"{result.file_bytes / 1e6:.3f} MB of weight files; the size model (the `autocompress` format's "
                 f"packing) predicted {result.predicted_bytes / 1e6:.3f} MB")
    threads_note = (f"; rebuilt and measured with {result.torch_threads} torch thread(s), as the search's worker "
                    "ran it" if result.torch_threads else "")
    lines = [
        f"# {Path(str(cfg.model.name)).name}, compressed by autocompress",
        "",
        f"Trial {trial.number} of study `{cfg.study_name}` ({len(run.completed())} completed trials), "
        f"picked from the feasible Pareto front.",
        "",
        f"- base model: `{cfg.model.name}` (task {task})",
        f"- target device: {target}",
        f"- objectives: {', '.join(cfg.objectives)}; constraints: {', '.join(cfg.constraints) or 'none'}",
        f"- plan: {trial.user_attrs.get('plan_summary', plan.summary())}",
        f"- format: `{fmt.name}`",
        f"- size: {size_note}",
        "",
        "## Metrics",
        "",
        "Measured during the search, and again on the model loaded from this directory "
        "(same evaluation data: `data.evaluation` of the search config" + threads_note + ").",
        "",
        markdown_table(["metric", "search", "this export"], rows),
        *(samples_section(samples) if samples else []),
        *format_section(fmt, result, task),
        *card_lines(getattr(plan, "kv_cache", None)),
        *vocab_card_lines(plan),
        "## Plan",
        "",
        markdown_table(list(columns), [list(r) for r in body]) if body else "(empty plan: the original model)\n",
    ]
    return "\n".join(lines)
