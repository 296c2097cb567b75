"""NextTokenEvaluator: 0 KL and full agreement for the original model, a perturbed one scores worse; the stored
KL against a direct full-vocabulary computation; perplexity as PerplexityEvaluator's; NaN and bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autocompress.data import load_texts
from autocompress.errors import UserError
from autocompress.evaluators import EVALUATORS, PerplexityEvaluator
from autocompress.evaluators.next_token import NextTokenEvaluator, ReferenceSketch, coarse_kl, full_kl, \
    predicted_rows, stored_kl
from autocompress.loading import load_model


@pytest.fixture(scope="module")
def llama():
    return load_model("random:llama")


@pytest.fixture(scope="module")
def texts():
    return load_texts(n=12, seed=0)


def perturbed(model, scale: float = 0.5, seed: int = 0):
    """A copy whose last block's MLP output weights carry Gaussian noise."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = other.model.layers[-1].mlp.down_proj.weight
        w.add_(torch.randn(w.shape, generator=g) * w.std() * scale)
    return other


def test_the_original_model_scores_zero_kl_and_full_agreement(llama, texts):
    ev = EVALUATORS.get("next_token")(llama.model, llama.tokenizer, texts, batch_size=5)
    got = ev.evaluate(llama.model)
    assert set(got) == set(NextTokenEvaluator.metrics)
    assert got["kl"] == 0.0 and got["kl_p99"] == 0.0 and got["top1_agreement"] == 1.0
    assert got["perplexity_ratio"] == 1.0


def test_perplexity_and_nll_are_perplexity_evaluators(llama, texts):
    ev = NextTokenEvaluator(llama.model, llama.tokenizer, texts, batch_size=5)
    ppl = PerplexityEvaluator(llama.model, llama.tokenizer, texts, batch_size=5)
    other = perturbed(llama.model)
    for model in (llama.model, other):
        got, want = ev.evaluate(model), ppl.evaluate(model)
        for key in ("perplexity", "nll", "perplexity_ratio"):
            assert got[key] == pytest.approx(want[key], rel=1e-6), key


def test_a_perturbed_last_layer_raises_kl_and_lowers_agreement(llama, texts):
    ev = NextTokenEvaluator(llama.model, llama.tokenizer, texts, batch_size=5)
    mild, strong = ev.evaluate(perturbed(llama.model, 0.5)), ev.evaluate(perturbed(llama.model, 5.0))
    assert 0 < mild["kl"] < strong["kl"] and mild["kl"] <= mild["kl_p99"]
    assert strong["top1_agreement"] < mild["top1_agreement"] <= 1.0 and strong["top1_agreement"] < 1.0
    assert strong["perplexity_ratio"] != 1.0


class CharTokenizer:
    """One token per character (ids 1..vocab-1 by code point), right-padded with 0: a tokenizer for a model
    with a small vocabulary."""

    pad_token_id = 0

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def __call__(self, texts, padding=True, truncation=True, max_length=128, return_tensors="pt"):
        rows = [[1 + ord(c) % (self.vocab - 1) for c in t][:max_length] for t in texts]
        width = max(map(len, rows))
        return {"input_ids": torch.tensor([r + [0] * (width - len(r)) for r in rows]),
                "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])}


def small_llama(vocab: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      initializer_range=0.5)  # peaked distributions, as a trained model's
    return LlamaForCausalLM(cfg).eval()


def direct_kl(reference, model, batches) -> torch.Tensor:
    """Per-position KL over the whole vocabulary, straight from both models' logits."""
    out = []
    for (p, _), (q, _) in zip(predicted_rows(reference, batches), predicted_rows(model, batches)):
        out.append(full_kl(torch.log_softmax(p, -1), torch.log_softmax(q, -1)))
    return torch.cat(out)


@pytest.fixture(scope="module")
def small():
    vocab = 512
    reference = small_llama(vocab, 0)
    texts = load_texts(n=24, seed=3)
    return reference, perturbed(reference, 1.0), CharTokenizer(vocab), texts


def test_stored_kl_equals_the_full_kl_when_top_k_covers_the_vocabulary(small):
    reference, other, tok, texts = small
    ev = NextTokenEvaluator(reference, tok, texts, max_length=48, top_k=512)
    full = direct_kl(reference, other, ev.batches)
    assert torch.isinf(ev.reference.rest).all()  # no mass outside the top k
    assert ev.evaluate(other)["kl"] == pytest.approx(full.mean().item(), rel=1e-9)


def test_coarsened_kl_is_a_lower_bound_at_every_position(small):
    reference, other, tok, texts = small
    ev = NextTokenEvaluator(reference, tok, texts, max_length=48, top_k=16)
    done, bounds = 0, []
    for q, _ in predicted_rows(other, ev.batches):
        ref = ev.reference.rows(done, done + q.shape[0], torch.device("cpu"))
        bounds.append(coarse_kl(ref, torch.log_softmax(q, -1)))
        done += q.shape[0]
    full = direct_kl(reference, other, ev.batches)
    lower = torch.cat(bounds)
    assert (lower <= full + 1e-12).all() and lower.mean() < 0.99 * full.mean()  # the tail matters here
    assert NextTokenEvaluator(reference, tok, texts, max_length=48, top_k=16, tail_samples=0).evaluate(other)[
        "kl"] == pytest.approx(lower.mean().item(), rel=1e-12)


def test_stored_kl_with_tail_samples_is_within_the_documented_bound(small):
    reference, other, tok, texts = small
    ev = NextTokenEvaluator(reference, tok, texts, max_length=48)  # the defaults: top_k 128 < vocab 512
    full = direct_kl(reference, other, ev.batches).mean().item()
    got = ev.evaluate(other)["kl"]
    assert full > 0.01 and got == pytest.approx(full, rel=0.01)


def test_tail_estimate_is_unbiased_over_seeds():
    """Averaged over sampling draws, the stored KL converges to the full KL (4 distribution pairs): within 4
    standard errors of the mean."""
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(4, 300, generator=g) * 2, -1)
    logq = torch.log_softmax(logp + torch.randn(4, 300, generator=g) * 0.3, -1)
    full = full_kl(logp, logq)
    gen = torch.Generator().manual_seed(1)
    runs = torch.stack([stored_kl(ReferenceSketch.of(logp, 8, 16, gen), logq) for _ in range(2000)])
    standard_error = runs.std(0) / len(runs) ** 0.5
    assert ((runs.mean(0) - full).abs() < 4 * standard_error).all()
    assert (standard_error > 0).all() and (standard_error < 0.01 * full).all()  # each draw does sample


def test_reference_is_deterministic_and_small(llama, texts):
    a = NextTokenEvaluator(llama.model, llama.tokenizer, texts, top_k=32, tail_samples=16)
    b = NextTokenEvaluator(llama.model, llama.tokenizer, texts, top_k=32, tail_samples=16)
    assert all(torch.equal(getattr(a.reference, f), getattr(b.reference, f))
               for f in ("ids", "logp", "rest", "tail_ids", "tail_logp", "argmax"))
    assert a.reference.nbytes == len(a.reference) * (8 * 32 + 8 * 16 + 8)
    assert a.reference.ids.device.type == "cpu"
    other = perturbed(llama.model)
    assert a.evaluate(other) == b.evaluate(other)


def test_nan_logits_give_nan(llama, texts):
    ev = NextTokenEvaluator(llama.model, llama.tokenizer, texts[:3])
    broken = copy.deepcopy(llama.model)
    with torch.no_grad():
        broken.model.layers[1].self_attn.o_proj.weight.fill_(math.nan)
    got = ev.evaluate(broken)
    assert set(got) == set(NextTokenEvaluator.metrics) and all(math.isnan(v) for v in got.values())
    assert broken.training is False


class OneTokenTokenizer:
    """Every text is a single token: nothing to predict."""

    pad_token_id = 0

    def __call__(self, texts, **kwargs):
        return {"input_ids": torch.full((len(texts), 1), 5), "attention_mask": torch.ones(len(texts), 1)}


def test_bad_input(llama, texts):
    with pytest.raises(UserError, match="two tokens"):
        NextTokenEvaluator(llama.model, OneTokenTokenizer(), ["a", "b"])
    with pytest.raises(UserError, match="top_k"):
        NextTokenEvaluator(llama.model, llama.tokenizer, texts, top_k=0)
    with pytest.raises(UserError, match="tail_samples"):
        NextTokenEvaluator(llama.model, llama.tokenizer, texts, tail_samples=-1)


@pytest.mark.slow
def test_smollm2_against_itself_and_an_8bit_copy(smollm2):
    from autocompress.models import inspect_model
    from autocompress.plan import LayerPlan
    from autocompress.policies import apply_plan
    from autocompress.selection import uniform_plan

    model, tok = smollm2
    texts = load_texts("python-docs", n=4, seed=0)
    ev = NextTokenEvaluator(model, tok, texts, batch_size=4, max_length=64)
    same = ev.evaluate(model)
    assert same["kl"] == 0.0 and same["kl_p99"] == 0.0 and same["top1_agreement"] == 1.0
    assert 1.0 < same["perplexity"] < 100
    info = inspect_model(model, "causal-lm")
    rtn8 = apply_plan(copy.deepcopy(model), uniform_plan(info, LayerPlan(bits=8, group_size=None)), info=info)
    got = ev.evaluate(rtn8)
    assert 0 < got["kl"] < 0.05 and got["top1_agreement"] > 0.9


def test_predicted_rows_leaves_the_grad_mode_alone_when_dropped_early(llama, texts):
    """A consumer that stops early (zip over two of them) must not be left in inference mode: a later
    training step (distillation in the same worker) needs gradients."""
    from autocompress.data import make_batches
    from autocompress.evaluators.next_token import predicted_rows

    batches = make_batches(llama.tokenizer, texts[:4], batch_size=2, max_length=16,
                           keys=("input_ids", "attention_mask"))
    rows = predicted_rows(llama.model, batches)
    next(rows)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    del rows
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
