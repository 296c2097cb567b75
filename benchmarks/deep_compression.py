"""Deep Compression's pipeline on the real all-MiniLM-L6-v2: pruning, then quantization (uniform grid or k-means
codebook at the same bits), then lossless entropy coding of the packed integer streams; and which coder
(zstd, lzma, zlib) gives more on these streams, at what cost when loading.

Run:  PYTHONPATH=. .venv/bin/python benchmarks/deep_compression.py [--n-eval 64] [--stem deep_compression_minilm]
Writes benchmarks/results/deep_compression_minilm.json and .md.

Plans: the 36 Linear layers of the 6 encoder blocks; "pruned" is 50% unstructured magnitude pruning of each;
"4-bit" is RTN symmetric with groups of 128 inputs; "kmeans 4-bit" one 16-entry fp16 codebook per matrix
(`quant_method: kmeans`). Every quantized row also quantizes the word embedding table to 4 bits (RTN, groups of
128; a table takes no codebook), as Deep Compression compressed every layer. Sizes are the packed export's
tensor bytes (`plan_size`, equal to what `save_compressed` writes) and, coded, the bytes of the same tensors
entropy-coded (`export/entropy.py`: the integer streams, and float tensors by byte planes). Fidelity: mean cosine of mean-pooled embeddings to the
float model's on `--n-eval` builtin sentences (seed 0), of the model the plan makes (the export reloads it
bit-identically). Load times: `load_compressed` of the written export, median of 3, on a shared machine.
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
    args = parser.parse_args()

    import torch

    from autocompress.data import load_texts
    from autocompress.evaluators.fidelity import FidelityEvaluator
    from autocompress.evaluators.size import plan_size
    from autocompress.export import load_compressed, save_compressed
    from autocompress.export.entropy import CODERS, encode
    from autocompress.export.packed import pack_model
    from autocompress.loading import load_model
    from autocompress.plan import CompressionPlan, LayerPlan
    from autocompress.policies import apply_plan

    torch.set_num_threads(1)
    env = machine_env()
    lm = load_model("all-MiniLM-L6-v2")
    evaluator = FidelityEvaluator(lm.model, lm.tokenizer, load_texts("builtin", n=args.n_eval, seed=0))
    linears = [n for n, li in lm.info.layers.items() if li.block is not None]
    table = LayerPlan(bits=4, group_size=128)
    steps = {
        "dense (fp32)": {},
        "pruned 50%": {n: LayerPlan(sparsity=0.5) for n in linears},
        "pruned + uniform 4-bit": {**{n: LayerPlan(sparsity=0.5, bits=4) for n in linears}, TABLE: table},
        "pruned + kmeans 4-bit": {**{n: LayerPlan(sparsity=0.5, bits=4, quant_method="kmeans") for n in linears},
                                  TABLE: table},
        "uniform 4-bit": {**{n: LayerPlan(bits=4) for n in linears}, TABLE: table},
        "kmeans 4-bit": {**{n: LayerPlan(bits=4, quant_method="kmeans") for n in linears}, TABLE: table},
    }
    rows = []
    for name, layers in steps.items():
        plan = CompressionPlan(layers)
        start = time.perf_counter()
        model = apply_plan(copy.deepcopy(lm.model), plan, None, info=lm.info)
        apply_s = time.perf_counter() - start
        fidelity = float(evaluator.evaluate(model)["fidelity"])
        packed = pack_model(model, plan, lm.info)
        size = plan_size(plan, lm.info).total_bytes
        assert packed.tensor_bytes == size
        row = {"step": name, "bytes": size, "ratio": lm.info.total_params * 4 / size, "fidelity": fidelity,
               "apply_s": round(apply_s, 2), "coded": {}}
        for coder in CODERS:
            start = time.perf_counter()
            coded, _ = encode(packed.tensors, coder)
            row["coded"][coder] = {"bytes": sum(t.numel() * t.element_size() for t in coded.values()),
                                   "encode_s": round(time.perf_counter() - start, 2)}
        if name in ("kmeans 4-bit", "uniform 4-bit", "pruned + kmeans 4-bit"):
            loads = {}
            for coder in (None, *CODERS):
                with tempfile.TemporaryDirectory() as tmp:
                    save_compressed(model, plan, lm.info, tmp, entropy=coder)
                    loads[coder or "none"] = round(_median_time(lambda: load_compressed(tmp)), 2)
            row["load_s"] = loads
        rows.append(row)
        print(name, row, flush=True)
    env["load_after"] = load_average()
    result = {"model": "all-MiniLM-L6-v2", "n_eval": args.n_eval, "rows": rows, "env": env,
              "load_average": load_average()}
    save_results(args.stem, result, _markdown(rows, env))


def _markdown(rows: list[dict], env: dict) -> str:
    coders = list(rows[0]["coded"])
    head = ("| step | packed MB | x smaller | fidelity | " + " | ".join(f"{c} MB" for c in coders) + " |\n"
            "|---|---:|---:|---:|" + "---:|" * len(coders) + "\n")
    body = "".join(f"| {r['step']} | {r['bytes'] / 1e6:.2f} | {r['ratio']:.1f} | {r['fidelity']:.4f} | "
                   + " | ".join(f"{r['coded'][c]['bytes'] / 1e6:.2f}" for c in coders) + " |\n" for r in rows)
    loads = [r for r in rows if "load_s" in r]
    load_head = "| plan | " + " | ".join(f"load {k} (s)" for k in loads[0]["load_s"]) + " | " + \
        " | ".join(f"encode {c} (s)" for c in coders) + " |\n|---|" + "---:|" * (len(loads[0]["load_s"]) + len(coders))
    load_body = "".join(f"\n| {r['step']} | " + " | ".join(f"{v:.2f}" for v in r["load_s"].values()) + " | "
                        + " | ".join(f"{r['coded'][c]['encode_s']:.2f}" for c in coders) + " |" for r in loads)
    return ("# Deep Compression on all-MiniLM-L6-v2\n\n" + env_words(env) + "\n\n" + head + body + "\n"
            + load_head + load_body + "\n")


if __name__ == "__main__":
    main()
