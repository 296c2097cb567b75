"""Deep Compression's pipeline on a real model (all-MiniLM-L6-v2, or SmolLM2-135M-Instruct): pruning, then quantization (uniform grid or k-means
codebook at the same bits), then lossless entropy coding of the packed integer streams; and which coder
(zstd, lzma, zlib) gives more on these streams, at what cost when loading.

Run:  PYTHONPATH=. .venv/bin/python benchmarks/deep_compression.py [--n-eval 64] [--stem deep_compression_minilm]
      PYTHONPATH=. .venv/bin/python benchmarks/deep_compression.py --model SmolLM2-135M-Instruct --n-eval 8 \
          --stem deep_compression_smollm2 --no-load-times
Writes benchmarks/results/<stem>.json and .md.

Plans: the 36 Linear layers of the 6 encoder blocks; "pruned" is 50% unstructured magnitude pruning of each;
"4-bit" is RTN symmetric with groups of 128 inputs; "kmeans 4-bit" one 16-entry fp16 codebook per 128 output rows
(`quant_method: kmeans`). Every quantized row also quantizes the word embedding table to 4 bits (RTN, groups of
128; a table takes no codebook), as Deep Compression compressed every layer. Sizes are the packed export's
tensor bytes (`plan_size`, equal to what `save_compressed` writes) and, coded, the bytes of the same tensors
entropy-coded (`export/entropy.py`: the integer streams, and float tensors by byte planes). Fidelity: mean cosine of mean-pooled embeddings to the
float model's on `--n-eval` builtin sentences (seed 0), of the model the plan makes (the export reloads it
bit-identically). A causal LM (SmolLM2: its 210 block Linears; the tied table / LM head, 4 bits RTN in groups of
128, on the head) is scored by the mean next-token KL and the perplexity ratio against the float model on
`--n-eval` python-docs passages of up to 256 tokens. SmolLM2's weights come from a Q4_1 GGUF: they lie on a
4-bit, group-32 asymmetric grid, which neither the 4-bit groups of 128 nor a codebook per 128 rows reproduces.
Load times: `load_compressed` of the written export, median of 3, on a shared machine.

"kmeans 4-bit weighted" is the same codebooks with `kmeans_weighting: activation` (policies/kmeans_weighted.py:
k-means weighted by each input channel's mean squared activation), calibrated as a search calibrates
(`data.calibration` defaults: 64 texts of the evaluation's source at seed 1, none of the evaluation texts,
extended to 4 tokens per input of the widest layer, max_length 128; sequential for a causal LM). `--steps`
runs only the named steps (comma-separated), e.g.
      --steps "uniform 4-bit,kmeans 4-bit,kmeans 4-bit weighted" --no-load-times --stem deep_compression_minilm_weighted
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import env_words, load_average, machine_env, save_results  # noqa: E402

TABLE = "embeddings.word_embeddings"


def _median_time(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-eval", type=int, default=64)
    parser.add_argument("--stem", default="deep_compression_minilm")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="all-MiniLM-L6-v2 or SmolLM2-135M-Instruct")
    parser.add_argument("--no-load-times", action="store_true", help="skip timing load_compressed per coder")
    parser.add_argument("--steps", default=None, help="comma-separated step names to run (default: all)")
    args = parser.parse_args()

    import torch

    from autocompress.data import load_texts
    from autocompress.evaluators.fidelity import FidelityEvaluator
    from autocompress.evaluators.next_token import NextTokenEvaluator
    from autocompress.evaluators.size import plan_size
    from autocompress.export import load_compressed, save_compressed
    from autocompress.export.entropy import CODERS, encode
    from autocompress.export.packed import pack_model
    from autocompress.loading import load_model
    from autocompress.plan import CompressionPlan, LayerPlan
    from autocompress.policies import apply_plan

    torch.set_num_threads(1)
    env = machine_env()
    lm = load_model(args.model)
    source = "python-docs" if lm.task == "causal-lm" else "builtin"
    eval_texts = load_texts(source, n=args.n_eval, seed=0)
    if lm.task == "causal-lm":
        evaluator = NextTokenEvaluator(lm.model, lm.tokenizer, eval_texts, max_length=256)
        metrics, table_name = ("kl", "perplexity_ratio"), "lm_head"  # the tied table's entry goes on the head
    else:
        evaluator = FidelityEvaluator(lm.model, lm.tokenizer, eval_texts)
        metrics, table_name = ("fidelity",), TABLE
    linears = [n for n, li in lm.info.layers.items() if li.block is not None]
    table = LayerPlan(bits=4, group_size=128)
    steps = {
        "dense (fp32)": {},
        "pruned 50%": {n: LayerPlan(sparsity=0.5) for n in linears},
        "pruned + uniform 4-bit": {**{n: LayerPlan(sparsity=0.5, bits=4) for n in linears}, table_name: table},
        "pruned + kmeans 4-bit": {**{n: LayerPlan(sparsity=0.5, bits=4, quant_method="kmeans") for n in linears},
                                  table_name: table},
        "uniform 4-bit": {**{n: LayerPlan(bits=4) for n in linears}, table_name: table},
        "kmeans 4-bit": {**{n: LayerPlan(bits=4, quant_method="kmeans") for n in linears}, table_name: table},
        "kmeans 4-bit weighted": {**{n: LayerPlan(bits=4, quant_method="kmeans", kmeans_weighting="activation")
                                     for n in linears}, table_name: table},
    }
    if args.steps:
        wanted = [s.strip() for s in args.steps.split(",")]
        unknown = [s for s in wanted if s not in steps]
        if unknown:
            parser.error(f"--steps: unknown {unknown}; steps are {list(steps)}")
        steps = {k: v for k, v in steps.items() if k in wanted}
    calibration, calib_meta = None, {}
    if "kmeans 4-bit weighted" in steps:
        calibration, calib_meta = _calibration(lm, source, eval_texts)
    rows = []
    for name, layers in steps.items():
        plan = CompressionPlan(layers)
        start = time.perf_counter()
        model = apply_plan(copy.deepcopy(lm.model), plan, calibration if "weighted" in name else None, info=lm.info)
        apply_s = time.perf_counter() - start
        scores = evaluator.evaluate(model)
        packed = pack_model(model, plan, lm.info)
        size = plan_size(plan, lm.info).total_bytes
        assert packed.tensor_bytes == size
        row = {"step": name, "bytes": size, "ratio": lm.info.total_params * 4 / size,
               **{k: float(scores[k]) for k in metrics},
               "apply_s": round(apply_s, 2), "coded": {}}
        for coder in CODERS:
            start = time.perf_counter()
            coded, _ = encode(packed.tensors, coder)
            row["coded"][coder] = {"bytes": sum(t.numel() * t.element_size() for t in coded.values()),
                                   "encode_s": round(time.perf_counter() - start, 2)}
        if not args.no_load_times and name in ("kmeans 4-bit", "uniform 4-bit", "pruned + kmeans 4-bit"):
            loads = {}
            for coder in (None, *CODERS):
                with tempfile.TemporaryDirectory() as tmp:
                    save_compressed(model, plan, lm.info, tmp, entropy=coder)
                    loads[coder or "none"] = round(_median_time(lambda: load_compressed(tmp)), 2)
            row["load_s"] = loads
        rows.append(row)
        print(name, row, flush=True)
    env["load_after"] = load_average()
    result = {"model": args.model, "n_eval": args.n_eval, "rows": rows, "env": env, **calib_meta,
              "load_average": load_average()}
    save_results(args.stem, result, _markdown(rows, env, args.model, metrics, calib_meta))


def _calibration(lm, source: str, eval_texts: list[str]):
    """(Calibration, its description) as a search builds it (module docstring)."""
    from autocompress.calibration import calibration_texts, min_tokens, resolve_sequential
    from autocompress.data import make_batches
    from autocompress.policies import Calibration

    need = min_tokens([li.in_features for li in lm.info.layers.values()])
    texts = calibration_texts(lm.tokenizer, source, 64, 1, 128, need, exclude=eval_texts)
    batches = make_batches(lm.tokenizer, texts, batch_size=16, max_length=128)
    tokens = int(sum(int(b["attention_mask"].sum()) for b in batches))
    sequential = resolve_sequential(None, lm.task)
    return Calibration(batches, sequential=sequential), {
        "calibration": {"source": source, "texts": len(texts), "tokens": tokens, "sequential": sequential}}


def _markdown(rows: list[dict], env: dict, model: str, metrics: tuple[str, ...], calib_meta: dict) -> str:
    coders = list(rows[0]["coded"])
    head = ("| step | packed MB | x smaller | " + " | ".join(metrics) + " | "
            + " | ".join(f"{c} MB" for c in coders) + " | apply (s) |\n"
            "|---|---:|---:|" + "---:|" * (len(metrics) + len(coders) + 1) + "\n")
    body = "".join(f"| {r['step']} | {r['bytes'] / 1e6:.2f} | {r['ratio']:.1f} | "
                   + " | ".join(f"{r[k]:.4f}" for k in metrics) + " | "
                   + " | ".join(f"{r['coded'][c]['bytes'] / 1e6:.2f}" for c in coders)
                   + f" | {r['apply_s']:.1f} |\n" for r in rows)
    title = f"# Deep Compression on {model}\n\n" + env_words(env) + "\n\n"
    if model.startswith("SmolLM2"):
        title += ("SmolLM2's weights come from a Q4_1 GGUF: they lie on a 4-bit, group-32 asymmetric grid, which "
                  "neither 4-bit groups of 128 nor a codebook per 128 rows reproduces.\n\n")
    if calib_meta:
        c = calib_meta["calibration"]
        title += (f"\"kmeans 4-bit weighted\": k-means weighted by each input channel's mean squared activation, "
                  f"calibrated on {c['texts']} {c['source']} texts ({c['tokens']} tokens, none of the evaluation "
                  f"texts), {'sequentially' if c['sequential'] else 'in one pass'}. apply (s): applying the plan, "
                  "its calibration passes included, on a shared machine.\n\n")
    loads = [r for r in rows if "load_s" in r]
    if not loads:
        return title + head + body
    load_head = "| plan | " + " | ".join(f"load {k} (s)" for k in loads[0]["load_s"]) + " | " + \
        " | ".join(f"encode {c} (s)" for c in coders) + " |\n|---|" + "---:|" * (len(loads[0]["load_s"]) + len(coders))
    load_body = "".join(f"\n| {r['step']} | " + " | ".join(f"{v:.2f}" for v in r["load_s"].values()) + " | "
                        + " | ".join(f"{r['coded'][c]['encode_s']:.2f}" for c in coders) + " |" for r in loads)
    return title + head + body + "\n" + load_head + load_body + "\n"


if __name__ == "__main__":
    main()
