"""Sequential vs one-pass GPTQ, with and without act-order, on the real all-MiniLM-L6-v2: what the block-by-block
Hessians cost and gain on the quickstart's encoder (where `data.calibration.sequential: null` keeps the
one-pass GPTQ).

Run:  PYTHONPATH=. .venv/bin/python benchmarks/gptq_minilm.py [--n-eval 128] [--stem gptq_minilm]
Writes benchmarks/results/gptq_minilm.json and gptq_minilm.md.

Every plan quantizes the 36 Linear layers of the 6 encoder blocks with GPTQ (symmetric). Fidelity: mean
cosine of mean-pooled embeddings to the float model's on `--n-eval` builtin sentences (seed 0). Calibration:
what a search builds (`data.calibration` defaults: 64 builtin sentences, seed 1, extended to 4 tokens per input
of the widest layer, 6,144 tokens, max_length 128). `apply_s` is one application's wall time, without a memo
(a search worker's memo spares the one-pass GPTQ its passes and its GPTQ calls on later plans; the sequential
one only where the earlier blocks' entries match).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import load_average, machine_env, save_results  # noqa: E402

GRIDS = {"W4 g128": dict(bits=4, group_size=128), "W3 g32": dict(bits=3, group_size=32),
         "W3 per-channel": dict(bits=3, group_size=None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-eval", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a search trial's default: 1)")
    parser.add_argument("--stem", default="gptq_minilm")
    args = parser.parse_args()

    import torch

    from autocompress.calibration import calibration_texts, min_tokens
    from autocompress.data import load_texts, make_batches
    from autocompress.evaluators.fidelity import FidelityEvaluator
    from autocompress.loading import load_model
    from autocompress.plan import LayerPlan
    from autocompress.policies import Calibration, apply_plan, quantize
    from autocompress.selection import Rule, build_plan

    torch.set_num_threads(args.threads)
    env = machine_env()
    lm = load_model("all-MiniLM-L6-v2")
    need = min_tokens([li.in_features for li in lm.info.layers.values()])
    texts = calibration_texts(lm.tokenizer, "builtin", 64, 1, 128, need)
    batches = make_batches(lm.tokenizer, texts, batch_size=16, max_length=128)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    evaluator = FidelityEvaluator(lm.model, lm.tokenizer, load_texts("builtin", n=args.n_eval, seed=0))
    rows = []
    for grid_name, grid in GRIDS.items():
        plan = build_plan(lm.info, [Rule(LayerPlan(**grid, quant_method="gptq"))])
        for sequential, act_order in itertools.product((False, True), (False, True)):
            start = time.perf_counter()
            with mock.patch.object(quantize, "GPTQ_ACT_ORDER", act_order):
                model = apply_plan(copy.deepcopy(lm.model), plan, Calibration(batches, sequential=sequential),
                                   info=lm.info)
            apply_s = time.perf_counter() - start
            metrics = evaluator.evaluate(model)
            row = {"case": f"{grid_name} GPTQ {'sequential' if sequential else 'one-pass'}"
                           f"{' act-order' if act_order else ''}", "sequential": sequential, "act_order": act_order,
                   "fidelity": round(metrics["fidelity"], 5), "fidelity_min": round(metrics["fidelity_min"], 5),
                   "apply_s": round(apply_s, 2)}
            rows.append(row)
            print(row, flush=True)
    env["load_after"] = load_average()
    result = {"model": "all-MiniLM-L6-v2", "calibration_texts": len(texts), "calibration_tokens": tokens,
              "n_eval": args.n_eval, "env": env, "rows": rows}
    lines = ["# Sequential vs one-pass GPTQ on all-MiniLM-L6-v2", "",
             f"Fidelity on {args.n_eval} builtin sentences; calibration {len(texts)} texts, {tokens} tokens (the "
             f"search's default, sized to 4 tokens per input). {env['cpus']} shared CPU cores, torch {env['torch']} "
             f"({env['torch_threads']} threads); seconds from a contended machine are only indicative.", "",
             "| case | fidelity | fidelity_min | apply s |", "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['fidelity']} | {r['fidelity_min']} | {r['apply_s']} |" for r in rows]
    save_results(args.stem, result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
