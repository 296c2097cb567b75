"""`measured`: time the real compressed model on this machine (see `kernels` for what runs for real).

prefill: one forward over `batch` x `seq_len` random tokens (all attended). A causal LM computes the
logits of the last position only (`logits_to_keep=1`, as generation does and as `plan_ops` prices it).
decode: a causal LM is prefilled with `seq_len - 1` tokens outside the timed region (so that the timed
step, like `plan_ops`' decode, attends over `seq_len` positions and never passes the model's position
limit); then one new token per sequence is timed against that cache, and the cache is cropped back by
one token after each step, so every timed step sees the same context. Encoders refuse decode (`UserError`).
On CUDA the device is synchronized before and after every timed call.
"""

from __future__ import annotations

import inspect
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from autocompress.errors import UserError
from autocompress.evaluators.latency._base import (
    LATENCY_MODELS,
    LatencyModel,
    LatencyReport,
    Workload,
    time_ms,
)
from autocompress.evaluators.latency.kernels import build_real_model
from autocompress.hardware.profile import DeviceProfile
from autocompress.models import ModelInfo
from autocompress.plan import CompressionPlan


def _is_causal(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    name = type(model).__name__
    return bool(getattr(config, "is_decoder", False)) or "CausalLM" in name or "LMHead" in name


def _sync(device: str) -> None:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def _accepts(model: nn.Module, arg: str) -> bool:
    try:
        return arg in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _inputs(model: nn.Module, batch: int, length: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids below the vocabulary size (avoiding the first 100 ids, often special) and an
    all-ones attention mask, [batch, length], on `device`."""
    emb = model.get_input_embeddings()
    vocab = getattr(emb, "num_embeddings", None) or model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    low = 100 if vocab > 200 else 0
    ids = torch.randint(low, vocab, (batch, length), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones(batch, length, dtype=torch.long, device=device)}


def _decode_step(model: nn.Module, workload: Workload, device: str) -> Callable[[], float]:
    context = max(workload.seq_len - 1, 1)
    prompt = _inputs(model, workload.batch, context, device)
    step_ids = _inputs(model, workload.batch, 1, device, seed=1)["input_ids"]
    mask = torch.ones(workload.batch, context + 1, dtype=torch.long, device=device)
    arg = "cache" if _accepts(model, "cache") else "past_key_values"  # transformers 5 renamed the argument
    with torch.inference_mode():
        out = model(**prompt, use_cache=True)
        cache = out.get("cache", out.get("past_key_values"))
    if cache is None or not hasattr(cache, "crop"):
        raise UserError(f"{type(model).__name__} returned no croppable KV cache; decode cannot be timed")

    def step() -> float:
        _sync(device)
        t0 = time.perf_counter()
        model(input_ids=step_ids, attention_mask=mask, use_cache=True, **{arg: cache})
        _sync(device)
        ms = (time.perf_counter() - t0) * 1e3
        cache.crop(-1)  # drop the token just added: the next step sees the same context (negative = remove)
        return ms

    return step


def model_step(model: nn.Module, workload: Workload, device: str = "cpu") -> Callable[[], float]:
    """A function that runs one `workload` call of `model` (already on `device`, in eval mode) and returns its
    milliseconds (see the module docstring for what a call is; decode's cache is prepared here, outside the
    timed calls, and cropped back after each). Call it under `torch.inference_mode()`. decode needs a causal
    LM with a KV cache; anything else raises `UserError`."""
    if workload.mode == "decode":
        if not _is_causal(model):
            raise UserError(f"workload mode decode needs a causal language model; {type(model).__name__} is an "
                            "encoder (use mode: prefill)")
        return _decode_step(model, workload, device)
    inputs: dict[str, Any] = _inputs(model, workload.batch, workload.seq_len, device)
    if _is_causal(model):
        inputs["use_cache"] = False
        if _accepts(model, "logits_to_keep"):
            inputs["logits_to_keep"] = 1

    def step() -> float:
        _sync(device)
        t0 = time.perf_counter()
        model(**inputs)
        _sync(device)
        return (time.perf_counter() - t0) * 1e3

    return step


def measure_model(model: nn.Module, workload: Workload, device: str = "cpu", warmup: int = 3,
                  repeats: int = 15) -> float:
    """Median milliseconds of one `workload` call of `model` (already on `device`, in eval mode): `model_step`
    timed with `time_ms`'s protocol (warm-up, then at least `repeats` calls). decode needs a causal LM with a
    KV cache; anything else raises `UserError`."""
    step = model_step(model, workload, device)
    samples: list[float] = []
    time_ms(lambda: samples.append(step()), warmup=warmup, repeats=repeats)
    return statistics.median(samples[warmup:])


@LATENCY_MODELS.register("measured")
class MeasuredLatency(LatencyModel):
    """Times the plan's real model on `device` (the profile is kept for reference only): builds it with
    `build_real_model` on every `predict`, so each call costs a model copy plus the timing. The report has
    no per-operator breakdown (`ops` is empty)."""

    name = "measured"
    needs_model = True

    def __init__(self, profile: DeviceProfile | None, base_model: nn.Module, device: str = "cpu",
                 warmup: int = 3, repeats: int = 15) -> None:
        super().__init__(profile)
        self.base_model = base_model
        self.device = device
        self.warmup = warmup
        self.repeats = repeats

    def predict(self, plan: CompressionPlan, info: ModelInfo, workload: Workload) -> LatencyReport:
        if workload.mode == "decode" and not _is_causal(self.base_model):
            raise UserError(f"workload mode decode needs a causal language model; {info.model_type} is an "
                            "encoder (use mode: prefill)")
        model = build_real_model(self.base_model, plan, self.device)
        try:
            ms = measure_model(model, workload, self.device, self.warmup, self.repeats)
        finally:
            del model
            if str(self.device).startswith("cuda") and torch.cuda.is_available():
                torch.cuda.empty_cache()
        if not math.isfinite(ms) or ms <= 0:
            raise RuntimeError(f"measured latency {ms!r} ms is not a positive number")
        return LatencyReport(total_ms=ms, ops=[], model="measured")
