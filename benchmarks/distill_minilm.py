"""Does distillation recover what compression lost? all-MiniLM-L6-v2, 3-bit RTN g32 + 30% magnitude sparsity.

Run:  .venv/bin/python benchmarks/distill_minilm.py [--steps 100 200 400] [--threads 2]
Writes benchmarks/results/distill_minilm.json and distill_minilm.md.

The plan quantizes and prunes all 36 Linear layers of the 6 encoder blocks. Fidelity (FidelityEvaluator):
mean cosine of mean-pooled embeddings to the original model's, on built-in sentences drawn with one seed;
the distillation texts are a draw with another seed, minus every evaluation sentence (asserted disjoint).
One run of max(steps) steps, measured at each requested step count: the learning rate is constant, so the
model after k steps of it is the model a k-step run gives. Seconds are training time only (the fidelity
evaluations are timed apart). The plan is checked to hold exactly after training (`plan_violations`).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

# OpenMP threads that spin while waiting make every op slow when the CPU is shared (2 threads measured 2.6x
# slower per step than with passive waiting on a busy 2-core machine); set before torch starts OpenMP
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from autocompress.data import load_texts, make_batches  # noqa: E402
from autocompress.distill import DistillConfig, distill  # noqa: E402
from autocompress.evaluators.fidelity import FidelityEvaluator  # noqa: E402
from autocompress.loading import load_model  # noqa: E402
from autocompress.plan import CompressionPlan, LayerPlan  # noqa: E402
from autocompress.policies import apply_plan  # noqa: E402
from autocompress.policies.verify import plan_violations  # noqa: E402
from autocompress.selection import Rule, build_plan  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 200, 400])
    parser.add_argument("--n-eval", type=int, default=256)
    parser.add_argument("--n-train", type=int, default=1024, help="texts drawn for training (before removing "
                                                                     "evaluation sentences)")
    parser.add_argument("--lr", type=float, default=DistillConfig.lr)
    parser.add_argument("--beta", type=float, default=DistillConfig.beta)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="distill_minilm", help="name of the result files")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()

    base = load_model("all-MiniLM-L6-v2")
    eval_texts = load_texts("builtin", n=args.n_eval, seed=1000)
    drawn = load_texts("builtin", n=args.n_train, seed=1)
    train_texts = [t for t in drawn if t not in set(eval_texts)]
    assert not set(train_texts) & set(eval_texts) and len(set(eval_texts)) == len(eval_texts)
    evaluator = FidelityEvaluator(base.model, base.tokenizer, eval_texts)
    batches = make_batches(base.tokenizer, train_texts, batch_size=args.batch_size, max_length=args.max_length)

    layers = build_plan(base.info, [Rule(LayerPlan(bits=3, group_size=32, sparsity=0.3))]).layers
    cfg = DistillConfig(steps=max(args.steps), lr=args.lr, beta=args.beta, batch_size=args.batch_size,
                        max_length=args.max_length, eval_every=math.gcd(*args.steps), seed=0)
    plan = CompressionPlan(layers, distill=cfg)
    t0 = time.perf_counter()
    student = apply_plan(copy.deepcopy(base.model), plan, batches[:8], info=base.info)
    apply_s = time.perf_counter() - t0
    rows = [dict(steps=0, train_s=0.0, **evaluator.evaluate(student))]
    print(f"plan: {plan.summary()}; {len(train_texts)} training texts ({len(drawn) - len(train_texts)} evaluation "
          f"sentences removed), {len(eval_texts)} evaluation texts, {args.threads} threads", flush=True)
    print(f"{'steps':>5}  {'fidelity':>8}  {'min':>6}  {'top10':>6}  {'train s':>8}", flush=True)

    def show(r: dict) -> None:
        print(f"{r['steps']:5d}  {r['fidelity']:8.4f}  {r['fidelity_min']:6.3f}  {r['topk_agreement']:6.3f}  "
              f"{r['train_s']:8.1f}", flush=True)

    show(rows[0])
    wanted = set(args.steps)
    clock = {"start": time.perf_counter(), "eval": 0.0}

    def report(step: int, metrics: dict[str, float]) -> bool:
        train_s = time.perf_counter() - clock["start"] - clock["eval"]
        t = time.perf_counter()
        if step in wanted:
            rows.append(dict(steps=step, train_s=train_s, loss=metrics["loss"], **evaluator.evaluate(student)))
            show(rows[-1])
        clock["eval"] += time.perf_counter() - t
        return False

    # eval_fn returning nothing: no held-out metric is computed and every batch trains
    result = distill(student, base.model, batches, cfg, base.task, report, eval_fn=lambda m: {}, plan=plan)
    violations = plan_violations(student, plan, base.info)
    print(f"plan realized after training: {not violations} {violations[:2]}", flush=True)

    env = dict(python=sys.version.split()[0], torch=torch.__version__, machine=platform.machine(),
               threads=args.threads, omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), n_eval=len(eval_texts),
               n_train=len(train_texts), load_average=os.getloadavg()[0])
    out = dict(env=env, plan=plan.to_dict(), plan_summary=plan.summary(), apply_s=apply_s,
               trainable_params=result.trainable_params, plan_realized=not violations, rows=rows,
               losses=result.losses, distill_s=result.seconds, total_s=time.perf_counter() - t_all)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"all-MiniLM-L6-v2, {plan.summary()} on the 36 block Linears; distillation batch {args.batch_size}, "
             f"max_length {args.max_length}, lr {args.lr:g}, beta {args.beta:g}, {args.threads} CPU threads, torch "
             f"{env['torch']}; fidelity on {len(eval_texts)} built-in sentences disjoint from the "
             f"{len(train_texts)} training ones.", "",
             "| distillation steps | fidelity (cosine) | min | top-10 agreement | training s |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['steps']} | {r['fidelity']:.4f} | {r['fidelity_min']:.3f} | {r['topk_agreement']:.3f} | "
              f"{r['train_s']:.0f} |" for r in rows]
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / (args.out + '.json')} and .md; total {out['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
