"""`autocompress generate EXPORT_DIR`: what an exported causal LM says, decoded the fast way on this machine.

  autocompress generate EXPORT_DIR [--prompt TEXT ...] [--max-new-tokens 32] [--eager] [--json]

Loads a packed export (`load_compressed(..., kernels=True)`: the int8 / int4 CPU kernels where the plan has
them) and its tokenizer (the export directory holds it), then decodes each prompt greedily. A tokenizer with a
chat template gets the prompt as one user message (`evaluators.generation.prompt_ids`). Decoding is compiled
(`export.fast_decode.fast_generate`: a static cache and inductor-compiled steps; the first call compiles, tens
of seconds on a few cores, kept on disk for the next run) unless `--eager`, or unless the export carries a
quantized KV cache, which decodes eager with its own cache. Each completion goes to stdout; the timing (ms per
new token, the first call's compile included) to stderr. Bad input (not an export, no tokenizer, an encoder,
`--max-new-tokens` below 1) exits 2 with one line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from typing import Any

from autocompress.cli.common import step
from autocompress.errors import UserError


def decode(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int, compiled: bool) -> dict[str, Any]:
    """Greedy decoding of `prompt`: {"prompt", "completion", "new_tokens", "seconds", "runtime"}, the
    completion without the prompt, special tokens dropped."""
    import torch

    from autocompress.evaluators.generation import prompt_ids
    from autocompress.export.fast_decode import fast_generate
    from autocompress.kvcache.runtime import cache_kwargs

    ids = prompt_ids(tokenizer, prompt)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    greedy = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, "pad_token_id": pad}
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # generation-config notes (sampling settings unused when greedy)
        if compiled:
            out = fast_generate(model, inputs, max_new_tokens, **greedy)
        else:
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, **greedy, **cache_kwargs(model))
    seconds = time.perf_counter() - start
    new = out[0, ids.shape[1]:]
    return {"prompt": prompt, "completion": tokenizer.decode(new, skip_special_tokens=True).strip(),
            "new_tokens": int(new.numel()), "seconds": seconds, "runtime": "compiled" if compiled else "eager"}


def _cmd_generate(args: argparse.Namespace) -> int:
    from autocompress.evaluators.generation import DEFAULT_PROMPTS
    from autocompress.export.fast_decode import require_causal_lm
    from autocompress.export.load import load_compressed, read_export
    from autocompress.kvcache.runtime import kv_plan_of

    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1 (got {args.max_new_tokens})")
    read_export(args.export_dir)
    with step("loading the export"):
        loaded = load_compressed(args.export_dir, kernels=True)
    model, tokenizer = loaded.model, loaded.tokenizer
    require_causal_lm(model)
    if tokenizer is None:
        raise UserError(f"export {args.export_dir!r} holds no tokenizer; export again from a run whose model "
                        "has one")
    compiled = not args.eager and kv_plan_of(model) is None
    if not args.eager and not compiled:
        print("note: the export carries a quantized KV cache; decoding eager with its own cache",
              file=sys.stderr)
    results = []
    for prompt in args.prompt or DEFAULT_PROMPTS[:3]:
        with step("compiling and decoding" if compiled and not results else "decoding"):
            result = decode(model, tokenizer, prompt, args.max_new_tokens, compiled)
        results.append(result)
        if not args.json:
            print(f"> {prompt}\n{result['completion']}\n", flush=True)
        per_token = 1000 * result["seconds"] / max(result["new_tokens"], 1)
        print(f"{result['new_tokens']} new tokens in {result['seconds']:.2f} s ({per_token:.1f} ms/token, "
              f"{result['runtime']}{', first call: compile included' if compiled and len(results) == 1 else ''})",
              file=sys.stderr)
    if args.json:
        print(json.dumps({"export": args.export_dir, "kernels": loaded.kernels, "results": results}, indent=2))
    return 0


def add_generate_commands(sub: Any) -> None:
    p = sub.add_parser("generate", help="decode prompts with an exported causal LM (compiled, CPU kernels)",
                       description=__doc__.splitlines()[0])
    p.add_argument("export_dir", help="a directory `autocompress export` wrote (the default packed format)")
    p.add_argument("--prompt", action="append", help="a prompt (repeat for several; default: three short questions)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate per prompt (default 32)")
    p.add_argument("--eager", action="store_true", help="decode without compiling (no compile wait, slower steps)")
    p.add_argument("--json", action="store_true", help="the completions and timings as JSON on stdout")
    p.set_defaults(func=_cmd_generate)
