"""The packed export format: save a compressed model as real packed tensors, reload it, run real kernels.

  save_compressed(model, plan, info, out_dir, tokenizer=None, base_config=None, card=None) -> ExportReport
  load_compressed(path, kernels=False, device="cpu") -> CompressedModel
  export(run_dir_or_result, out_dir, trial=None, pick=None, force=False, format="autocompress", strict=False)
      -> ExportResult   (from_run)
  fast_generate(model, inputs, max_new_tokens, **generate) -> token ids   (compiled decode steps, fast_decode)

The packed layout is the one `autocompress.evaluators.size` counts, so the bytes written are the bytes predicted.
Modules: packing (bit streams), matrix (one weight <-> packed tensors), packed (model <-> tensors + metadata),
save, load, kernels (real CPU kernels for int8 / int4 weights), fast_decode (compiled generation); formats (the export format registry),
compressed_tensors and ct_layers (the compressed-tensors format), card (the model card), from_run. GGUF files
(llama.cpp): gguf (the registry's entry), gguf_writer (`write_gguf`, `check_gguf_export`, `load_gguf`) with
gguf_blocks (ggml block bytes), gguf_arch (architectures, metadata, q/k order) and gguf_tokenizer (the
tokenizer as metadata); imported on use.
"""

from __future__ import annotations

from autocompress.export.fast_decode import fast_generate
from autocompress.export.load import CompressedModel, load_compressed, read_export
from autocompress.export.save import FORMAT_VERSION, ExportReport, save_compressed

__all__ = ["FORMAT_VERSION", "CompressedModel", "ExportReport", "ExportResult", "export", "fast_generate",
           "load_compressed", "read_export", "save_compressed"]


def __getattr__(name: str):
    """`export` and `ExportResult` import the search's run-directory code: loaded on first use."""
    if name in ("export", "ExportResult"):
        from autocompress.export import from_run
        return getattr(from_run, name)
    raise AttributeError(f"module 'autocompress.export' has no attribute {name!r}")
