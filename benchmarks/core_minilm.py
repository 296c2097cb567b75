"""Core figures on the real all-MiniLM-L6-v2: fidelity and size of uniform plans, per technique and method.

Run:  .venv/bin/python benchmarks/core_minilm.py [--n-eval 256] [--n-calibration 128]
Writes benchmarks/results/core_minilm.json (every row's figures, with the Python / torch versions and thread
count) and core_minilm.md (one table: a row per case, its fidelity, top-10 agreement, packed size and parameters).

Every plan targets the 36 Linear layers of the 6 encoder blocks (embeddings and pooler stay as they are),
except the cases named "tables", which also (or only) quantize the three embedding tables. `--only` runs the
named cases and replaces just their rows in the results.
Fidelity: mean cosine similarity of mean-pooled embeddings to the original model's on built-in evaluation
sentences; top-10 agreement: shared nearest neighbours within that set. Calibration sentences are a disjoint
draw from the same built-in corpus.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

from autocompress.data import load_texts, make_batches
from autocompress.evaluators.fidelity import FidelityEvaluator
from autocompress.evaluators.size import plan_size
from autocompress.loading import load_model
from autocompress.plan import LayerPlan
from autocompress.policies import Calibration, apply_plan
from autocompress.policies.verify import plan_violations
from autocompress.selection import Rule

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, merge_rows, plan_with_tables  # noqa: E402

# name -> (question it answers, rules)
CASES = {
    "8-bit RTN g128": ("uniform 8-bit keeps fidelity >= 0.999", [Rule(LayerPlan(bits=8))]),
    "4-bit RTN g32": ("uniform 4-bit g32 keeps about 0.95", [Rule(LayerPlan(bits=4, group_size=32))]),
    "4-bit GPTQ g32": ("", [Rule(LayerPlan(bits=4, group_size=32, quant_method="gptq"))]),
    "3-bit RTN g32": ("the error-correcting quantizer beats RTN at 3 bits", [Rule(LayerPlan(bits=3, group_size=32))]),
    "3-bit GPTQ g32": ("", [Rule(LayerPlan(bits=3, group_size=32, quant_method="gptq"))]),
    "3-bit RTN g128": ("", [Rule(LayerPlan(bits=3))]),
    "3-bit GPTQ g128": ("", [Rule(LayerPlan(bits=3, quant_method="gptq"))]),
    "50% magnitude": ("Wanda beats magnitude at 50% sparsity", [Rule(LayerPlan(sparsity=0.5))]),
    "50% Wanda": ("", [Rule(LayerPlan(sparsity=0.5, prune_method="wanda"))]),
    "2:4 magnitude": ("", [Rule(LayerPlan(pattern="2:4"))]),
    "2:4 Wanda": ("", [Rule(LayerPlan(pattern="2:4", prune_method="wanda"))]),
    "FFN neurons -25% (magnitude)": ("structured pruning gives fewer parameters and runs",
                                     [Rule(LayerPlan(sparsity=0.25, pattern="structured"), targets=("re:intermediate$",))]),
    "FFN neurons -25% (Wanda)": ("", [Rule(LayerPlan(sparsity=0.25, pattern="structured", prune_method="wanda"),
                                           targets=("re:intermediate$",))]),
    "heads -25% (Wanda)": ("", [Rule(LayerPlan(sparsity=0.25, pattern="structured", prune_method="wanda"),
                                     targets=("re:attention.self$",))]),
    "FFN rank 50% SVD": ("", [Rule(LayerPlan(rank=0.5), targets=("re:(intermediate|output).dense$",), ignore=("re:attention",))]),
    "FFN rank 50% whitened": ("", [Rule(LayerPlan(rank=0.5, rank_method="whitened"),
                                        targets=("re:(intermediate|output).dense$",), ignore=("re:attention",))]),
    # the embedding tables too (word, position, token type: 12.1M of the 22.7M parameters), RTN per token
    "tables 8-bit g32 only": ("8-bit tables cost almost nothing", [], LayerPlan(bits=8, group_size=32)),
    "tables 4-bit g32 only": ("", [], LayerPlan(bits=4, group_size=32)),
    "8-bit RTN g128 + tables 8-bit g32": ("with the tables the packed model shrinks 3.8x at 8 bits",
                                          [Rule(LayerPlan(bits=8))], LayerPlan(bits=8, group_size=32)),
    "8-bit RTN g128 + tables 4-bit g32": ("", [Rule(LayerPlan(bits=8))], LayerPlan(bits=4, group_size=32)),
    "4-bit GPTQ g32 + tables 4-bit g32": ("", [Rule(LayerPlan(bits=4, group_size=32, quant_method="gptq"))],
                                          LayerPlan(bits=4, group_size=32)),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-eval", type=int, default=256)
    parser.add_argument("--n-calibration", type=int, default=128)
    parser.add_argument("--only", nargs="*", help="run only these case names")
    args = parser.parse_args()
    torch.manual_seed(0)

    base = load_model("all-MiniLM-L6-v2")
    texts = load_texts("builtin", n=args.n_eval + args.n_calibration, seed=0)
    eval_texts, calib_texts = texts[:args.n_eval], texts[args.n_eval:]
    calibration = Calibration(make_batches(base.tokenizer, calib_texts, batch_size=16, max_length=128))
    evaluator = FidelityEvaluator(base.model, base.tokenizer, eval_texts)
    base_params = base.info.total_params

    rows = []
    for name, case in CASES.items():
        if args.only and name not in args.only:
            continue
        claim, plan = case[0], plan_with_tables(base.info, *case[1:])
        model = copy.deepcopy(base.model)
        t0 = time.perf_counter()
        apply_plan(model, plan, calibration, info=base.info)
        apply_s = time.perf_counter() - t0
        violations = plan_violations(model, plan, base.info)
        metrics = evaluator.evaluate(model)
        size = plan_size(plan, base.info)
        params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        row = dict(case=name, claim=claim, layers=len(plan), fidelity=metrics["fidelity"],
                   fidelity_min=metrics["fidelity_min"], topk_agreement=metrics["topk_agreement"],
                   size_mb=size.size_mb, size_ratio=size.ratio, params=params, params_removed=base_params - params,
                   apply_s=apply_s, plan_realized=not violations)
        rows.append(row)
        print(f"{name:30s} fidelity {row['fidelity']:.5f}  top10 {row['topk_agreement']:.3f}  "
              f"size {row['size_mb']:6.2f} MB ({row['size_ratio']:.3f})  params {params:,}  "
              f"apply {apply_s:5.1f}s  realized {row['plan_realized']}", flush=True)

    env = dict(python=sys.version.split()[0], torch=torch.__version__, machine=platform.machine(),
               cpus=torch.get_num_threads(), n_eval=args.n_eval, n_calibration=args.n_calibration,
               original_size_mb=base.info.total_params * base.info.dtype_bytes / 1e6, original_params=base_params)
    RESULTS.mkdir(exist_ok=True)
    if args.only:  # keep the other cases' rows
        rows = merge_rows(RESULTS / "core_minilm.json", rows, list(CASES))
    (RESULTS / "core_minilm.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
    lines = [f"all-MiniLM-L6-v2 ({base_params:,} params, {env['original_size_mb']:.1f} MB fp32); "
             f"{args.n_eval} built-in eval sentences, {args.n_calibration} calibration; torch {env['torch']}, "
             f"{env['cpus']} CPU threads.", "",
             "| plan (36 block Linears unless named; tables = the embedding tables) | fidelity (cosine) | top-10 agreement | packed size MB | params |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['fidelity']:.4f} | {r['topk_agreement']:.3f} | {r['size_mb']:.2f} "
                     f"({r['size_ratio']:.2f}x) | {r['params']:,} |")
    (RESULTS / "core_minilm.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'core_minilm.json'} and core_minilm.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
