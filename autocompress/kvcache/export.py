"""What each export format does with a plan's quantized KV cache: the lines its report and model card carry.

No format stores a KV cache (it is made at run time), so a plan's `kv_cache` travels as a run-time setting:
  - `autocompress` (packed): plan.json and export.json record it; `load_compressed` gives the loaded model the
    same quantized cache (kvcache/runtime.py), exactly the one the search scored;
  - `compressed-tensors`: not written. Its `kv_cache_scheme` (compressed_tensors 0.20 `QuantizationArgs`,
    applied as a hook on each attention module's k/v outputs) is what vLLM reads: static scales calibrated
    ahead and stored as `k_scale`/`v_scale` (fp8 in practice; vLLM warns that it does not take asymmetric
    ones). The searched cache has dynamic per-token group scales, which that scheme cannot express and which
    we have no static scales to fake; the engine's own cache setting applies (vLLM: `--kv-cache-dtype fp8`).
    A warning line, so `--strict` refuses it;
  - `gguf`: llama.cpp picks the cache type when it runs (`-ctk` / `-ctv`, `--cache-type-k/v`): q8_0 and
    q4_0 are blocks of 32 with an fp16 scale, symmetric, the nearest match to kv_cache 8 / 4 with
    `group_size: 32, symmetric: true` (q4_0's grid is [-8, 7], ours [-7, 7]); q4_1 / q5_1 are asymmetric.
    An engine note, not a refusal.
The export's re-measurement (export/from_run.py) runs the reloaded model with the plan's cache in every
format, as an engine would run it with the setting above.
"""

from __future__ import annotations

from autocompress.kvcache.plan import KVCachePlan

_LLAMA_CPP = {8: "q8_0", 4: "q4_0"}


def llama_cpp_types(kv: KVCachePlan) -> str:
    """The llama.cpp cache type nearest to the plan's global bits: q8_0 (8), q4_0 / q4_1 (4, symmetric or not),
    f16 for 2 bits (llama.cpp has no 2-bit cache type)."""
    cache = _LLAMA_CPP.get(kv.bits, "f16")
    if kv.bits == 4 and not kv.symmetric:
        cache = "q4_1"
    return cache


def compressed_tensors_warning(kv: KVCachePlan) -> str:
    """The compressed-tensors export's warning line for a plan with a quantized cache."""
    return (f"kv_cache ({kv.summary()}): not written; compressed-tensors' kv_cache_scheme holds static "
            "calibrated scales (vLLM: fp8), not the searched per-token group scales; the engine's own cache "
            "setting applies (vLLM: --kv-cache-dtype fp8)")


def gguf_note(kv: KVCachePlan) -> str:
    """The GGUF export's engine note for a plan with a quantized cache."""
    t = llama_cpp_types(kv)
    exact = "" if kv.bits == 2 else f"; run llama.cpp with -ctk {t} -ctv {t} (the nearest ggml cache type)"
    return (f"kv_cache ({kv.summary()}): GGUF stores no cache, llama.cpp chooses its type at run time{exact}"
            + ("; llama.cpp has no 2-bit cache type" if kv.bits == 2 else "")
            + ("; per-block bits are not available there" if kv.layers else ""))


def card_lines(kv: KVCachePlan | None) -> list[str]:
    """The model card's "KV cache" section (empty without a quantized cache)."""
    if kv is None:
        return []
    t = llama_cpp_types(kv)
    return ["## KV cache", "",
            f"The plan quantizes the KV cache ({kv.summary()} bits; group size {kv.group_size}, "
            f"{'symmetric' if kv.symmetric else 'asymmetric'}): keys and values are put on that grid as they "
            "are written, and the metrics above were measured that way. No file stores a cache: "
            "`load_compressed` restores it for the `autocompress` format; llama.cpp takes it at run time "
            f"(`-ctk {t} -ctv {t}`" + (", the nearest type" if kv.bits in _LLAMA_CPP else ", which has no 2-bit "
                                          "type") + "); vLLM has its own (`--kv-cache-dtype fp8`).", ""]
