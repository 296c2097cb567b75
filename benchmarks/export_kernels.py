"""Packed export on the real all-MiniLM-L6-v2: bytes written vs predicted, exactness, fidelity and latency
of the reloaded model, dequantized and with real CPU kernels.

Run:  .venv/bin/python benchmarks/export_kernels.py [--n-eval 128] [--repeats 15] [--only NAME ...]
Writes benchmarks/results/export_kernels.json.

Every plan is uniform over the 36 Linear layers of the 6 encoder blocks (RTN, magnitude), the "+ tables" cases
also over the three embedding tables. For each: apply_plan
(the "searched" model), save_compressed, load_compressed with kernels False and True. Reported: predicted bytes
(`plan_size`), bytes of the tensors and of the model.safetensors file; max |diff| of the last hidden state
against the searched model (on the evaluation batches); fidelity (mean cosine of pooled embeddings to the
original model's, built-in sentences) of the searched, dequantized and kernel models; latency in ms of one
forward at batch 1 and 8, sequence 128, torch threads 2: the original dense fp32 model vs the dequantized load
vs the kernel load, timed interleaved (one call of each per round, after warm-up): the median over rounds,
the fastest call, and each median over the dense one; resident bytes (parameters + buffers) of each loaded
model. `--only` replaces just the named cases' rows in the results. The machine may be shared: the load average before
and after is recorded with the figures; compare the ratios of one case rather than times across cases.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from autocompress.data import load_texts
from autocompress.evaluators.fidelity import FidelityEvaluator
from autocompress.evaluators.size import plan_size
from autocompress.export import load_compressed, save_compressed
from autocompress.loading import load_model
from autocompress.plan import LayerPlan
from autocompress.policies import apply_plan
from autocompress.selection import Rule

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, merge_rows, plan_with_tables  # noqa: E402
CASES = {
    "W8A8 per-channel": LayerPlan(bits=8, group_size=None, act_bits=8),
    "8-bit weight-only per-channel": LayerPlan(bits=8, group_size=None),
    "4-bit g32 weight-only": LayerPlan(bits=4, group_size=32),
    "4-bit g128 weight-only": LayerPlan(bits=4, group_size=128),
    "50% unstructured": LayerPlan(sparsity=0.5),
    "2:4": LayerPlan(pattern="2:4"),
    # (block Linears, embedding tables): the tables held packed by kernels=True (PackedEmbedding)
    "W8A8 per-channel + tables 8-bit g32": (LayerPlan(bits=8, group_size=None, act_bits=8),
                                            LayerPlan(bits=8, group_size=32)),
    "4-bit g32 weight-only + tables 4-bit g32": (LayerPlan(bits=4, group_size=32), LayerPlan(bits=4, group_size=32)),
}


def resident_bytes(model: torch.nn.Module) -> int:
    """Bytes the model holds in parameters and buffers (each tensor once)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def max_diff(a: torch.nn.Module, b: torch.nn.Module, batches: list[dict]) -> float:
    with torch.no_grad():
        return max((a(**x).last_hidden_state - b(**x).last_hidden_state).abs().max().item() for x in batches)


def latency(models: dict[str, torch.nn.Module], batch: int, seq: int, repeats: int) -> dict[str, Any]:
    """Median ms of one forward per model, timed interleaved (one call of each per round) after 2 warm-ups;
    also each model's fastest call and its median over the dense model's (same rounds)."""
    g = torch.Generator().manual_seed(batch)
    inputs = {"input_ids": torch.randint(1000, 20000, (batch, seq), generator=g),
              "attention_mask": torch.ones(batch, seq, dtype=torch.long)}
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            for _ in range(2):
                m(**inputs)
        for _ in range(repeats):
            for k, m in models.items():
                t0 = time.perf_counter()
                m(**inputs)
                times[k].append((time.perf_counter() - t0) * 1000)
    out: dict[str, Any] = {k: statistics.median(v) for k, v in times.items()}
    out["min"] = {k: min(v) for k, v in times.items()}
    out["vs_dense"] = {k: out[k] / out["dense"] for k in models}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-eval", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--only", nargs="*", help="run only these case names")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    load_before = os.getloadavg()

    base = load_model("all-MiniLM-L6-v2")
    evaluator = FidelityEvaluator(base.model, base.tokenizer, load_texts("builtin", n=args.n_eval, seed=0))
    rows = []
    for name, entry in CASES.items():
        if args.only and name not in args.only:
            continue
        linears, tables = entry if isinstance(entry, tuple) else (entry, None)
        plan = plan_with_tables(base.info, [Rule(linears)], tables)
        searched = apply_plan(copy.deepcopy(base.model), plan, info=base.info)
        with tempfile.TemporaryDirectory() as out:
            report = save_compressed(searched, plan, base.info, out, tokenizer=base.tokenizer)
            plain, fast = load_compressed(out), load_compressed(out, kernels=True)
        kinds: dict[str, int] = {}
        for kind in fast.kernels.values():
            kinds[kind] = kinds.get(kind, 0) + 1
        models = {"dense": base.model, "dequantized": plain.model, "kernels": fast.model}
        row = dict(
            case=name, layers=len(plan), predicted_bytes=plan_size(plan, base.info).total_bytes,
            tensor_bytes=report.tensor_bytes, file_bytes=report.file_bytes, file_ratio=report.file_ratio,
            formats=sorted(set(report.formats.values())), kernels=kinds,
            max_diff_dequantized=max_diff(searched, plain.model, evaluator.batches),
            max_diff_kernels=max_diff(searched, fast.model, evaluator.batches),
            fidelity_searched=evaluator.evaluate(searched)["fidelity"],
            fidelity_dequantized=evaluator.evaluate(plain.model)["fidelity"],
            fidelity_kernels=evaluator.evaluate(fast.model)["fidelity"],
            latency_ms={f"batch{b}": latency(models, b, args.seq, args.repeats) for b in (1, 8)},
            resident_bytes={k: resident_bytes(m) for k, m in models.items()},
        )
        rows.append(row)
        lat = row["latency_ms"]
        print(f"{name:30s} bytes {row['file_bytes'] / 1e6:6.2f} MB (pred {row['predicted_bytes'] / 1e6:6.2f}, "
              f"file/pred {row['file_ratio']:.4f})  |diff| {row['max_diff_dequantized']:.1e}/"
              f"{row['max_diff_kernels']:.1e}  fidelity {row['fidelity_dequantized']:.4f}/"
              f"{row['fidelity_kernels']:.4f}  kernels {kinds or '-'}  ms b1 "
              + "/".join(f"{lat['batch1'][k]:.1f}" for k in models) + "  b8 "
              + "/".join(f"{lat['batch8'][k]:.1f}" for k in models) + "  kernels/dense b1 "
              + f"{lat['batch1']['vs_dense']['kernels']:.2f} b8 {lat['batch8']['vs_dense']['kernels']:.2f}",
              flush=True)

    env = dict(python=sys.version.split()[0], torch=torch.__version__, machine=platform.machine(),
               processor=platform.processor(), cpus=os.cpu_count(), threads=torch.get_num_threads(),
               seq=args.seq, repeats=args.repeats, n_eval=args.n_eval, load_avg_before=load_before,
               load_avg_after=os.getloadavg(), original_bytes=base.info.total_params * base.info.dtype_bytes)
    RESULTS.mkdir(exist_ok=True)
    if args.only:  # keep the other cases' rows
        rows = merge_rows(RESULTS / "export_kernels.json", rows, list(CASES))
    (RESULTS / "export_kernels.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS / 'export_kernels.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
