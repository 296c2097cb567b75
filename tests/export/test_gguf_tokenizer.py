"""export/gguf_tokenizer.py: a tokenizer written as GGUF metadata is the tokenizer transformers' GGUF loader
builds back (same ids, same chat template), for byte-level BPE and SentencePiece BPE; others are refused."""

from __future__ import annotations

import gguf
import pytest
from transformers import AutoTokenizer, LlamaTokenizer

from autocompress.errors import UserError
from autocompress.export.gguf_tokenizer import BYTE, CONTROL, UNUSED, check_tokenizer, write_tokenizer
from autocompress.loading import load_model
from tests.gguf_files import write_tiny_gguf

TEXTS = ["the cat sat on the mat", "<|im_start|>hello the end", "x the ça 123", "  two  spaces"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"


def _round_trip(tmp_path, tokenizer, vocab_size):
    writer = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    summary = write_tokenizer(writer, tokenizer, vocab_size)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    back = AutoTokenizer.from_pretrained(tmp_path, gguf_file="t.gguf")
    return summary, gguf.GGUFReader(str(tmp_path / "t.gguf")), back


def test_byte_level_bpe(tmp_path):
    tokenizer = load_model(write_tiny_gguf(tmp_path / "src.gguf")).tokenizer  # built by transformers from a GGUF
    summary, reader, back = _round_trip(tmp_path, tokenizer, 70)  # 64 tokens, padded to 70 embedding rows
    assert summary == {"model": "gpt2", "pre": "gpt-2", "tokens": 64, "chat_template": True}
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert types[:3] == [CONTROL] * 3 and types[64:] == [UNUSED] * 6
    assert reader.fields["tokenizer.ggml.tokens"].contents()[64] == "[PAD64]"
    assert reader.fields["tokenizer.chat_template"].contents() == tokenizer.chat_template == TEMPLATE
    for text in TEXTS:
        assert back(text)["input_ids"] == tokenizer(text)["input_ids"], text
    assert back.chat_template == tokenizer.chat_template


def test_sentencepiece_bpe(tmp_path):
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + \
        ["▁", "t", "h", "e", "a", "c", "▁t", "he", "▁the", "at", "▁c", "▁cat"]
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("a", "t"), ("▁", "c"), ("▁c", "at")]
    tokenizer = LlamaTokenizer(vocab={t: i for i, t in enumerate(pieces)}, merges=merges)
    tokenizer.chat_template = TEMPLATE
    summary, reader, back = _round_trip(tmp_path, tokenizer, len(pieces))
    assert summary["model"] == "llama"
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert types[0] == 2 and types[3:259] == [BYTE] * 256
    scores = reader.fields["tokenizer.ggml.scores"].contents()
    assert scores[pieces.index("▁cat")] == -5.0 and scores[pieces.index("t")] == 0.0  # minus the merge rank
    for text in ("the cat", "hat tech", "x the ça"):
        assert back(text)["input_ids"] == tokenizer(text)["input_ids"], text
    assert back.chat_template == TEMPLATE


def test_other_tokenizers_are_refused():
    with pytest.raises(UserError, match="WordPiece"):
        check_tokenizer(load_model("random:llama").tokenizer)  # the random models carry MiniLM's tokenizer
    with pytest.raises(UserError, match="no tokenizer"):
        check_tokenizer(None)
