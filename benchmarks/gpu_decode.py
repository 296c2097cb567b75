"""Decode ms/token of a SmolLM2-135M-shaped model on a CUDA GPU: bf16 against int8 and int4 weight-only kernels.

Run (on the GPU machine; see benchmarks/gpu_session.sh):  python3 benchmarks/gpu_decode.py [--device cuda]
Writes benchmarks/results/gpu_decode_cuda.json and .md (`--device cpu` writes *_cpu: a dry run of the code).

The model is SmolLM2-135M-Instruct's shape (30 blocks, hidden 576, FFN 1536, 9 query / 3 KV heads, tied
49,152-token vocabulary) with random weights, in bfloat16: a GPU machine has no package index to bring the
GGUF from, and latency does not depend on the weights' values. The block Linears of each case run:
  bf16  torch's dense bf16 Linear;
  int8  `torch._weight_int8pack_mm` (per-output-channel scales, symmetric);
  int4  torch's int4 weight-only kernel (tinygemm on CUDA: `aten._weight_int4pack_mm`, asymmetric 4-bit in
        groups of 32 or 64 input channels; `aten._weight_int4pack_mm_for_cpu` on a CPU).
The tied embedding / LM head stays bf16 in every case. Each case's outputs are checked against its own
dequantized weights (relative error of one block Linear) so a mis-packed kernel cannot pass as fast.

Two readings:
  model   decode: batch 1, one new token after `--context` tokens of KV cache, the latency models' own step
          (`measured.model_step`), eager mode; rounds interleave the cases and the figure is the median.
  kernel  the block GEMMs alone (x [1, k] @ W^T for each distinct shape, summed over the 30 blocks), timed
          inside a CUDA graph of 50 calls so launch overhead is left out: what the weights' bytes cost.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine_env, save_results  # noqa: E402

SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
             num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
             tie_word_embeddings=True)
CASES = {"bf16": None, "int8": ("int8", None), "int4 g64": ("int4", 64), "int4 g32": ("int4", 32)}


class WeightOnly(nn.Module):
    """x @ W^T with W held as int8 (per-row scale) or 4-bit (asymmetric, per-group scale and minimum) through
    torch's weight-only kernels; `reference` is the dequantized W the kernel must reproduce."""

    def __init__(self, linear: nn.Linear, kind: str, group: int | None) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        self.kind, self.group = kind, group
        self.out_features, self.in_features = w.shape
        cuda = w.is_cuda
        if kind == "int8":
            scale = w.abs().amax(1).clamp_min(1e-8) / 127
            q = (w / scale[:, None]).round().clamp(-127, 127)
            self.reference = (q * scale[:, None]).to(torch.bfloat16)
            self.register_buffer("q", q.to(torch.int8).contiguous())
            self.register_buffer("scale", scale.to(torch.bfloat16))
            return
        g = w.reshape(w.shape[0], -1, group)
        lo, hi = g.amin(-1), g.amax(-1)
        scale = ((hi - lo) / 15).clamp_min(1e-8)
        u = ((g - lo[..., None]) / scale[..., None]).round().clamp(0, 15)
        self.reference = (u * scale[..., None] + lo[..., None]).reshape(w.shape).to(torch.bfloat16)
        u = u.reshape(w.shape).to(torch.int32)
        zero = lo + 8 * scale  # the kernels compute (u - 8) * scale + zero
        self.register_buffer("scales_and_zeros", torch.stack([scale.T, zero.T], -1).to(torch.bfloat16).contiguous())
        if cuda:
            packed = (u[:, ::2] << 4 | u[:, 1::2]).to(torch.uint8).contiguous()
            self.register_buffer("q", torch.ops.aten._convert_weight_to_int4pack(packed, 2))
        else:
            self.register_buffer("q", torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.contiguous(), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()
        if self.kind == "int8":
            y = torch._weight_int8pack_mm(x2, self.q, self.scale)
        elif self.q.is_cuda:
            y = torch.ops.aten._weight_int4pack_mm(x2, self.q, self.group, self.scales_and_zeros)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.q, self.group, self.scales_and_zeros)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def build(device: str) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE)).to(torch.bfloat16)
    return model.to(device).eval()


def swap(model: nn.Module, kind: str, group: int | None) -> float:
    """Replaces every block Linear by a WeightOnly module; returns the worst relative error of one call."""
    worst = 0.0
    for block in model.model.layers:
        for parent in (block.self_attn, block.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    module = WeightOnly(child, kind, group)
                    x = torch.randn(4, child.in_features, device=child.weight.device, dtype=torch.bfloat16)
                    ref = (x.float() @ module.reference.float().T)
                    err = ((module(x).float() - ref).norm() / ref.norm()).item()
                    worst = max(worst, err)
                    del module.reference
                    setattr(parent, name, module)
    return worst


def kernel_ms(model: nn.Module, device: str) -> float:
    """Milliseconds of all block GEMMs of one decode token (m = 1), launch overhead left out on CUDA."""
    block = model.model.layers[0]
    linears = [m for p in (block.self_attn, block.mlp) for m in p.children() if isinstance(m, (nn.Linear, WeightOnly))]
    xs = [torch.randn(1, m.in_features, device=device, dtype=torch.bfloat16) for m in linears]

    def once() -> None:
        for m, x in zip(linears, xs):
            m(x)

    calls = 50
    if device == "cuda":
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                once()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                once()
        run = graph.replay
    else:
        def run() -> None:
            for _ in range(calls):
                once()
    times = []
    for _ in range(7):
        _sync(device)
        t0 = time.perf_counter()
        run()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3 / calls)
    return statistics.median(times) * len(model.model.layers)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    from autocompress.evaluators.latency._base import Workload
    from autocompress.evaluators.latency.measured import model_step

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    base = build(args.device)
    models, errors = {}, {}
    for case, spec in CASES.items():
        model = copy.deepcopy(base)
        try:
            errors[case] = swap(model, *spec) if spec else 0.0
            models[case] = model
        except Exception as exc:  # noqa: BLE001  (a kernel this torch build lacks on this device)
            print(f"{case}: not run: {type(exc).__name__}: {exc}", flush=True)
            errors[case] = None
    workload = Workload(batch=1, seq_len=args.context, mode="decode")
    samples: dict[str, list[float]] = {case: [] for case in models}
    with torch.inference_mode():
        steps = {case: model_step(m, workload, args.device) for case, m in models.items()}
        for case in steps:
            for _ in range(3):
                steps[case]()
        for _ in range(args.rounds):
            for case, step in steps.items():
                samples[case].append(statistics.median(step() for _ in range(args.steps)))
        kernels = {case: kernel_ms(m, args.device) for case, m in models.items()}
    rows = []
    for case in CASES:
        if case not in models:
            rows.append({"case": case, "ran": False})
            continue
        ms = statistics.median(samples[case])
        rows.append({"case": case, "ran": True, "decode_ms_per_token": round(ms, 3),
                     "speedup_vs_bf16": round(statistics.median(samples["bf16"]) / ms, 3),
                     "block_gemm_ms": round(kernels[case], 4),
                     "gemm_speedup_vs_bf16": round(kernels["bf16"] / kernels[case], 3),
                     "max_rel_error": None if errors[case] is None else round(errors[case], 5)})
        print(rows[-1], flush=True)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    tag = "cuda" if args.device == "cuda" else "cpu"
    save_results(f"gpu_decode_{tag}", {"device": device_name, "context": args.context, "rounds": args.rounds,
                                       "steps": args.steps, "rows": rows, "env": machine_env(args.device)},
                 markdown(rows, device_name, args))


def markdown(rows: list[dict], device_name: str, args: argparse.Namespace) -> str:
    lines = [f"# SmolLM2-135M-shaped decode on {device_name}, torch {torch.__version__}", "",
             f"Random-init SmolLM2-135M shape in bf16, batch 1, one token after {args.context} tokens of KV cache; "
             f"median of {args.rounds} interleaved rounds of {args.steps} steps (benchmarks/gpu_decode.py). "
             "'block GEMMs' is the 30 blocks' Linears alone at m = 1, launch overhead left out (CUDA graph).", "",
             "| block Linears | decode ms/token | vs bf16 | block GEMMs ms | vs bf16 | kernel rel. error |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if not r["ran"]:
            lines.append(f"| {r['case']} | not run (kernel missing) | | | | |")
            continue
        lines.append(f"| {r['case']} | {r['decode_ms_per_token']} | {r['speedup_vs_bf16']}x | {r['block_gemm_ms']} | "
                     f"{r['gemm_speedup_vs_bf16']}x | {r['max_rel_error']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
