"""Tiny GGUF files for tests, written with the `gguf` package's `GGUFWriter`: a 2-block llama (hidden 64,
4 query / 2 key-value heads, FFN 128) whose matrices are stored Q4_1 and embedding Q8_0 like llama.cpp's
small quantized files, with a 64-token byte-level BPE vocabulary, so transformers can load it, build its
tokenizer and run it. 55 KB; converts in well under a second."""

from __future__ import annotations

import numpy as np

HIDDEN, FFN, BLOCKS, HEADS, KV_HEADS, VOCAB = 64, 128, 2, 4, 2, 64


def write_tiny_gguf(path, seed: int = 0, architecture: str = "llama", tied: bool = True) -> str:
    """Write the tiny model to `path` (random weights from `seed`); `tied=False` adds an output head."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    rng = np.random.default_rng(seed)
    a = architecture
    writer = gguf.GGUFWriter(str(path), a)
    writer.add_name("tiny test llama")
    for key, value in (("block_count", BLOCKS), ("context_length", 128), ("embedding_length", HIDDEN),
                       ("feed_forward_length", FFN), ("attention.head_count", HEADS),
                       ("attention.head_count_kv", KV_HEADS), ("rope.dimension_count", HIDDEN // HEADS),
                       ("vocab_size", VOCAB)):
        writer.add_uint32(f"{a}.{key}", value)
    writer.add_float32(f"{a}.rope.freq_base", 10000.0)
    writer.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    words = ["Ġ"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġt", "th", "he", "Ġthe"]
    tokens = special + words + [f"<extra_{i}>" for i in range(VOCAB - len(special) - len(words))]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(special) + [1] * (VOCAB - len(special)))
    writer.add_token_merges(["Ġ t", "t h", "h e", "Ġt he"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")

    def add(name: str, shape: tuple[int, ...], qtype) -> None:
        data = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        if qtype == Q.F32:
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    kv = KV_HEADS * HIDDEN // HEADS
    add("token_embd.weight", (VOCAB, HIDDEN), Q.Q8_0)
    for b in range(BLOCKS):
        add(f"blk.{b}.attn_norm.weight", (HIDDEN,), Q.F32)
        add(f"blk.{b}.ffn_norm.weight", (HIDDEN,), Q.F32)
        for name, shape in (("attn_q", (HIDDEN, HIDDEN)), ("attn_k", (kv, HIDDEN)), ("attn_v", (kv, HIDDEN)),
                            ("attn_output", (HIDDEN, HIDDEN)), ("ffn_gate", (FFN, HIDDEN)),
                            ("ffn_up", (FFN, HIDDEN)), ("ffn_down", (HIDDEN, FFN))):
            add(f"blk.{b}.{name}.weight", shape, Q.Q4_1)
    add("output_norm.weight", (HIDDEN,), Q.F32)
    if not tied:
        add("output.weight", (VOCAB, HIDDEN), Q.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)
