"""SmolLM2-135M-Instruct exported to GGUF by autocompress, decoded by llama.cpp: tokens/s per plan.

Run:  bash benchmarks/build_llama_cpp.sh            (once: builds llama-bench into .llama.cpp/)
      .venv/bin/python benchmarks/llamacpp_decode.py [--llama-bench PATH] [--threads 2] [--depth 256] [--rounds 3]
Writes benchmarks/results/llamacpp_decode.json and llamacpp_decode.md.

Each case is a plan of ggml block types (`LayerPlan.gguf_type`) on the 30 blocks' Linear layers and the tied
embedding / LM head, what a search with `target.format: gguf` plans. It is applied to the model (rounded onto
that ggml grid), its next-token quality measured against the original (KL, its 99th percentile, top-1
agreement, perplexity ratio on python-docs passages), and the model written with autocompress's GGUF writer
(`export.gguf_writer.write_gguf`, the file `autocompress export --format gguf` writes). llama.cpp's own
`llama-bench` then decodes with it: `--n-gen` new tokens after `--depth` tokens of context (`-d`), batch 1,
`--threads` threads, `--reps` repetitions. Timing survives a busy machine by rounds: each round benchmarks
every case once, and a case's speed-up is the median over rounds of the F32 file's ms/token over the case's in
the same round. The PyTorch fp32 eager decode step (the model as loaded, same threads and context) is timed
before and after, for the speed-up a user sees against the model they started with.

The model's weights come from a Q4_1 GGUF (asymmetric 4-bit groups of 32): the Q4_1 case rounds them back onto
nearly that grid, so its quality is far better than what Q4_1 costs on a model trained in higher precision.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import env_words, load_average, machine_env, save_results  # noqa: E402
from benchmarks.decode_speed import decode_ms  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
# case -> (ggml type of the blocks' Linears, of the tied embedding / LM head); None: left in float32
CASES = {
    "F32": (None, None),
    "Q8_0": ("Q8_0", "Q8_0"),
    "Q4_0 blocks, Q8_0 head": ("Q4_0", "Q8_0"),
    "Q4_0": ("Q4_0", "Q4_0"),
    "Q4_1 (the source grid)": ("Q4_1", "Q4_1"),
}


def plan_for(info, blocks: str | None, head: str | None):
    from autocompress.plan import CompressionPlan, LayerPlan

    layers = {name: LayerPlan(gguf_type=blocks) for name in info.targets_by_default()} if blocks else {}
    if head:
        layers["lm_head"] = LayerPlan(gguf_type=head)
    return CompressionPlan(layers)


def bench(binary: str, path: str, args) -> float:
    """llama-bench's mean tokens/s decoding `args.n_gen` tokens after `args.depth` of context."""
    cmd = [binary, "-m", path, "-p", "0", "-n", str(args.n_gen), "-d", str(args.depth), "-t", str(args.threads),
           "-r", str(args.reps), "-o", "json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return next(float(t["avg_ts"]) for t in json.loads(out) if int(t["n_gen"]) > 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-bench", default=os.environ.get("LLAMA_BENCH", ".llama.cpp/build/bin/llama-bench"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--depth", type=int, default=256, help="tokens of context before the timed tokens")
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--torch-steps", type=int, default=20)
    ap.add_argument("--n-eval", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=256)
    args = ap.parse_args()
    if not os.path.isfile(args.llama_bench):
        print(f"no llama-bench at {args.llama_bench}: run bash benchmarks/build_llama_cpp.sh", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)

    from autocompress.data import load_texts
    from autocompress.evaluators.next_token import NextTokenEvaluator
    from autocompress.evaluators.size import plan_size
    from autocompress.export.gguf_writer import GGUF_FILE, write_gguf
    from autocompress.loading import load_model
    from autocompress.policies import apply_plan
    from autocompress.search.workers.workspace import ModelWorkspace

    env = machine_env()
    loaded = load_model(MODEL)
    base, tok, info = loaded.model, loaded.tokenizer, loaded.info
    evaluator = NextTokenEvaluator(base, tok, load_texts("python-docs", n=args.n_eval, seed=0), batch_size=4,
                                   max_length=args.max_length)
    torch_before = decode_ms(base, args.depth, args.torch_steps)()
    workspace = ModelWorkspace(base)
    work = tempfile.mkdtemp(prefix="llamacpp-")
    rows, files = [], {}
    for case, (blocks, head) in CASES.items():
        plan = plan_for(info, blocks, head)
        model = workspace.checkout()
        apply_plan(model, plan, None, info)
        quality = evaluator.evaluate(model)
        out = os.path.join(work, f"case{len(files)}")
        write_gguf(model, plan, info, out, tokenizer=tok)
        workspace.restore()
        files[case] = os.path.join(out, GGUF_FILE)
        rows.append({"case": case, "plan": plan.summary() or "none", "file_mb": os.path.getsize(files[case]) / 1e6,
                     "size_mb": plan_size(plan, info).size_mb,
                     **{k: quality[k] for k in ("kl", "kl_p99", "top1_agreement", "perplexity_ratio")}})
        print(rows[-1], flush=True)
    per_round: list[dict[str, float]] = []
    for r in range(args.rounds):
        per_round.append({case: 1e3 / bench(args.llama_bench, path, args) for case, path in files.items()})
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{c} {ms:.2f} ms" for c, ms in per_round[-1].items()),
              flush=True)
    torch_after = decode_ms(base, args.depth, args.torch_steps)()
    torch_ms = statistics.median([torch_before, torch_after])
    for row in rows:
        ms = [rd[row["case"]] for rd in per_round]
        speedups = [rd["F32"] / rd[row["case"]] for rd in per_round]
        row.update({"ms_per_token": statistics.median(ms), "tokens_per_s": 1e3 / statistics.median(ms),
                    "speedup_vs_f32": statistics.median(speedups), "speedup_min": min(speedups),
                    "speedup_max": max(speedups), "speedup_vs_torch_fp32": torch_ms / statistics.median(ms)})
    env["load_after"] = load_average()
    version = subprocess.run([args.llama_bench, "--version"], capture_output=True, text=True)
    setup = {"model": MODEL, "threads": args.threads, "depth": args.depth, "n_gen": args.n_gen, "reps": args.reps,
             "rounds": args.rounds, "n_eval": args.n_eval, "max_length": args.max_length,
             "torch_fp32_ms": {"before": torch_before, "after": torch_after},
             "llama_cpp": (version.stdout + version.stderr).strip().splitlines()[:2]}
    result = {"setup": setup, "env": env, "rows": rows}
    save_results("llamacpp_decode", result, markdown(result))
    return 0


def markdown(result: dict) -> str:
    s, env = result["setup"], result["env"]
    lines = [f"# {s['model']} exported to GGUF by autocompress, decoded by llama.cpp", "",
             f"llama-bench: {s['n_gen']} new tokens after {s['depth']} tokens of context, batch 1, {s['threads']} "
             f"threads, {s['reps']} repetitions per round, {s['rounds']} rounds over all cases (speed-up: median "
             "over rounds of the F32 file's ms/token over the case's, min-max in brackets). PyTorch fp32 eager "
             f"decode step of the original model, same threads and context: {s['torch_fp32_ms']['before']:.1f} ms "
             f"before, {s['torch_fp32_ms']['after']:.1f} ms after. Quality against the original on {s['n_eval']} "
             f"python-docs passages (max_length {s['max_length']}). llama.cpp: {'; '.join(s['llama_cpp'])}.",
             "The weights come from a Q4_1 GGUF (asymmetric 4-bit groups of 32): the Q4_1 case rounds them back onto "
             "nearly that grid, so its quality flatters Q4_1.", "Machine: " + env_words(env), "",
             "| case | file MB | ms/token | tokens/s | vs llama.cpp F32 | vs PyTorch fp32 | KL | KL p99 | top-1 | "
             "ppl ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['case']} | {r['file_mb']:.1f} | {r['ms_per_token']:.2f} | {r['tokens_per_s']:.1f} | "
                     f"{r['speedup_vs_f32']:.2f}x ({r['speedup_min']:.2f}-{r['speedup_max']:.2f}) | "
                     f"{r['speedup_vs_torch_fp32']:.2f}x | {r['kl']:.4f} | {r['kl_p99']:.3f} | "
                     f"{r['top1_agreement']:.3f} | {r['perplexity_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
