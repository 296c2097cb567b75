"""export/gguf_writer.py: a search with `target.format: gguf` on a tiny llama (a GGUF source with a byte-level
BPE tokenizer), each trial written as GGUF, read back by transformers' own GGUF loader and measured again: the
search's metrics, bit for bit the same weights, the tokenizer and chat template in the file; what GGUF cannot
hold refused in one line with nothing written. The real SmolLM2 (slow) at the end."""

from __future__ import annotations

import copy
import json
import math

import gguf
import pytest
import torch

from autocompress.errors import UserError
from autocompress.export.from_run import searched_threads, torch_threads
from autocompress.export.gguf_writer import GGUF_FILE, check_gguf_export, load_gguf, write_gguf
from autocompress.loading import load_model
from autocompress.plan import GGUF_TYPES, CompressionPlan, LayerPlan
from autocompress.policies import apply_plan
from autocompress.search.driver import run_search
from autocompress.search.rundir.reader import RunDir
from tests.gguf_files import write_tiny_gguf
from tests.support import make_config

SPACE = {"quantize": {"bits": [4, 5, 8, None], "symmetric": [True, False], "method": ["rtn", "gptq"]},
         "embeddings": {"bits": [8, 4, None], "symmetric": [True, False]}}
QUALITY = ("kl", "kl_p99", "top1_agreement", "perplexity", "nll", "perplexity_ratio")
P = "model.layers"


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gguf_search")
    config = make_config(tmp, model={"name": write_tiny_gguf(tmp / "tiny.gguf")}, space=SPACE,
                         target={"profile": "cpu-local", "format": "gguf"}, budget={"n_trials": 6},
                         objectives=["minimize kl", "minimize size_mb"], backend={"name": "local"})
    with torch_threads(1):
        run_search(config, show_progress=False)
    return tmp, config


def test_every_trial_written_as_gguf_is_the_model_the_search_scored(searched):
    from autocompress.distill.train import apply_and_distill
    from autocompress.search.workers.runner import TrialRunner

    tmp, config = searched
    run = RunDir.open(tmp / "run")
    trials = run.completed()
    assert len(trials) == 6
    runner = TrialRunner(config)
    for trial in trials:
        plan = run.plan(trial.number)
        assert plan.layers and all(e.gguf_type in GGUF_TYPES for e in plan.layers.values())
        out = tmp / f"trial-{trial.number}"
        with torch_threads(searched_threads(run, trial)):
            model = apply_and_distill(copy.deepcopy(runner.loaded.model), plan, runner.calibration, runner.info)
            report = write_gguf(model, plan, runner.info, out, tokenizer=runner.loaded.tokenizer)
            back, _ = load_gguf(str(out))
            measured = runner.evaluator.evaluate(back)
        _same_weights(model, back)  # transformers dequantizes exactly the weights the trial evaluated
        searched_metrics = trial.user_attrs["metrics"]
        for metric in QUALITY:
            assert math.isclose(measured[metric], searched_metrics[metric], rel_tol=1e-3), (trial.number, metric)
        assert report.tensor_bytes == report.predicted_bytes and not report.differences  # size objective = file
        assert set(report.formats.values()) <= {*GGUF_TYPES, "F32"}
        info = json.loads((out / "export.json").read_text())
        assert info["format"] == "gguf" and info["file_bytes"] == (out / GGUF_FILE).stat().st_size


def test_the_file_carries_tokenizer_and_chat_template(searched):
    tmp, config = searched
    out = next(p for p in tmp.iterdir() if p.name.startswith("trial-"))
    lm = load_model(config.model.name)
    reader = gguf.GGUFReader(str(out / GGUF_FILE))
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.chat_template"].contents() == lm.tokenizer.chat_template
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied: llama.cpp reuses token_embd
    _, tokenizer = load_gguf(str(out))
    for text in ("the hat", "<|im_start|>the end<|im_end|>"):
        assert tokenizer(text)["input_ids"] == lm.tokenizer(text)["input_ids"]
    messages = [{"role": "user", "content": "the"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == \
        lm.tokenizer.apply_chat_template(messages, tokenize=False)


@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    return load_model(write_tiny_gguf(tmp_path_factory.mktemp("untied") / "untied.gguf", tied=False))


def _batches():
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 64, (4, 16), generator=g),
             "attention_mask": torch.ones(4, 16, dtype=torch.long)}]


def test_integer_grids_and_an_untied_head(untied, tmp_path):
    layers = {f"{P}.0.self_attn.q_proj": LayerPlan(gguf_type="Q4_1", quant_method="gptq"),
              f"{P}.0.self_attn.k_proj": LayerPlan(bits=4, group_size=32, quant_method="gptq"),  # = Q4_0
              f"{P}.1.mlp.up_proj": LayerPlan(bits=3, group_size=None, symmetric=False),  # Q5_0, larger
              f"{P}.1.mlp.down_proj": LayerPlan(sparsity=0.5),  # F32, zeros kept, larger
              "lm_head": LayerPlan(gguf_type="Q8_0"), "model.embed_tokens": LayerPlan(gguf_type="Q5_1")}
    plan = CompressionPlan(layers)
    model = apply_plan(copy.deepcopy(untied.model), plan, _batches(), info=untied.info)
    with pytest.warns(UserWarning, match="larger than planned"):
        report = write_gguf(model, plan, untied.info, tmp_path / "out", tokenizer=untied.tokenizer)
    assert report.formats[f"{P}.0.self_attn.k_proj"] == "Q4_0" and report.formats[f"{P}.1.mlp.up_proj"] == "Q5_0"
    assert report.formats["lm_head"] == "Q8_0" and report.formats["model.embed_tokens"] == "Q5_1"
    assert len(report.differences) == 2 and report.tensor_bytes > report.predicted_bytes
    card = (tmp_path / "out" / "README.md").read_text()
    assert "llama-cli -m ./model.gguf" in card and "gguf_file='model.gguf'" in card
    back, _ = load_gguf(str(tmp_path / "out"))
    _same_weights(model, back)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, back(ids).logits)
    with pytest.raises(UserError, match="strict"):
        write_gguf(model, plan, untied.info, tmp_path / "strict", tokenizer=untied.tokenizer, strict=True)
    assert not (tmp_path / "strict").exists()


@pytest.mark.parametrize("entry, message", [
    (LayerPlan(bits=8, group_size=None, act_bits=8), "int8 activations"),
    (LayerPlan(rank=0.25), "low-rank"),
    (LayerPlan(bits=4, group_size=16), "group_size 16"),
    (LayerPlan(bits=8, group_size=32, symmetric=False), "8-bit asymmetric"),
    (LayerPlan(bits=4, group_size=32, quant_method="kmeans"), "a codebook"),
])
def test_what_gguf_cannot_hold_is_refused_before_writing(untied, tmp_path, entry, message):
    plan = CompressionPlan({f"{P}.0.mlp.up_proj": entry})
    with pytest.raises(UserError, match=message) as err:
        check_gguf_export(plan, untied.info, untied.model.config, untied.tokenizer)
    assert "\n" not in str(err.value)
    model = apply_plan(copy.deepcopy(untied.model), plan, _batches(), info=untied.info)
    with pytest.raises(UserError, match=message):
        write_gguf(model, plan, untied.info, tmp_path / "out", tokenizer=untied.tokenizer)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec, message", [("random:gpt2", "'gpt2' models are not mapped"),
                                           ("random:llama", "WordPiece")])
def test_an_architecture_or_tokenizer_it_cannot_map_is_refused(tmp_path, spec, message):
    lm = load_model(spec)
    with pytest.raises(UserError, match=message):
        write_gguf(lm.model, CompressionPlan({}), lm.info, tmp_path / "out", tokenizer=lm.tokenizer)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_smollm2_every_ggml_type(smollm2, tmp_path):
    types = list(GGUF_TYPES)
    layers = {n: LayerPlan(gguf_type=types[i % 5]) for i, n in enumerate(sorted(smollm2.info.layers))}
    plan = CompressionPlan(layers)  # lm_head is tied: its entry makes token_embd quantized too
    model = apply_plan(copy.deepcopy(smollm2.model), plan, None, info=smollm2.info)
    report = write_gguf(model, plan, smollm2.info, tmp_path, tokenizer=smollm2.tokenizer)
    assert report.tensor_bytes == report.predicted_bytes and not report.differences
    back, tokenizer = load_gguf(str(tmp_path))
    _same_weights(model, back)
    text = "The capital of France is Paris. It has 2,148,000 inhabitants."
    assert tokenizer(text)["input_ids"] == smollm2.tokenizer(text)["input_ids"]
    assert tokenizer.chat_template == smollm2.tokenizer.chat_template
    ids = smollm2.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, back(ids).logits)


def test_export_format_gguf_from_a_run_measures_the_file_through_transformers(searched, capsys):
    """`autocompress export RUN --format gguf`: the registry's gguf entry writes the file, transformers' GGUF
    loader reads it back, and the re-measured metrics are the searched ones; the card says how to load it."""
    import json

    from autocompress.cli import main

    tmp, _ = searched
    out = tmp / "gguf-export"
    assert main(["export", str(tmp / "run"), "--out", str(out), "--format", "gguf", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["format"] == "gguf"
    for k in QUALITY:
        assert abs(result["measured"][k] - result["searched"][k]) <= 1e-3 * max(abs(result["searched"][k]), 1e-9), k
    assert (out / GGUF_FILE).is_file() and result["file_bytes"] == (out / GGUF_FILE).stat().st_size
    card = (out / "README.md").read_text()
    assert "llama-cli -m" in card and "gguf_file=" in card
