"""`BaseModelMemo`: what data-aware policies computed on the unchanged base model, kept for the next plan.

A search applies many plans to fresh copies of one base model. Whenever a policy meets the model still
exactly as the base model (no earlier stage of the plan changed it), what it derives from the model and the
calibration batches is the same for every such plan: the calibration Gram matrices of `Calibration.input_grams`,
the activation ranges of `Calibration.input_absmax` (SmoothQuant), and every per-layer result that depends
only on the layer's weight, its Gram matrix and its plan entry (a GPTQ-quantized weight, an
activation-weighted k-means codebook: kmeans_weighted.py). A worker keeps one memo beside its base model
(`Calibration(batches, memo=...)`), so GPTQ, Wanda, whitened SVD, activation-aware structured pruning and
smoothing gather statistics once per worker instead of once per trial, and GPTQ quantizes each (layer, bits,
group size, symmetric) once. Sequential GPTQ (sequential.py) keys each layer's result also by a fingerprint
of the entries quantized before the layer's block, since its Hessian depends on them: it is reused only after
the same earlier blocks.

Contract:
  - `matches(model)` is True only when `model` holds the base model's state exactly (the same state_dict
    keys, shapes, dtypes, devices and values) and no more forward hooks than the base model. Only then may a
    policy read or store memo entries, so a reused value is bit-identical to computing it again.
  - The memo holds at most `max_bytes` of tensors (default 1 GiB); past that it stops storing, never evicts,
    and every later lookup of what it did not store is computed as without a memo.
  - It keeps references to the base model's tensors, not copies: the base model must not change while the
    memo is in use (a search's base model never does: trials change deep copies).
"""

from __future__ import annotations

from typing import Any, Callable, Hashable

import torch
from torch import nn

DEFAULT_MAX_BYTES = 1 << 30


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


class BaseModelMemo:
    """See the module docstring. `grams` maps module name -> Gram matrix; `absmax` module name -> per-input
    max |x|; `results` maps any hashable key (a policy's choice, e.g. ("quantize", layer, "gptq", bits,
    group_size, symmetric)) -> a tuple of tensors."""

    def __init__(self, base: nn.Module, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._state = base.state_dict(keep_vars=False)
        self._hooks = _hook_count(base)
        self.max_bytes, self.stored_bytes = max_bytes, 0
        self.grams: dict[str, torch.Tensor] = {}
        self.absmax: dict[str, torch.Tensor] = {}
        self.results: dict[Hashable, tuple[torch.Tensor, ...]] = {}
        self.hits = self.misses = 0

    @torch.no_grad()
    def matches(self, model: nn.Module) -> bool:
        """True when `model` is, in state and hooks, exactly the base model (see the contract)."""
        if _hook_count(model) != self._hooks:
            return False
        state = model.state_dict(keep_vars=False)
        if state.keys() != self._state.keys():
            return False
        for key, value in state.items():
            base = self._state[key]
            if (value.shape != base.shape or value.dtype != base.dtype or value.device != base.device
                    or not torch.equal(value, base)):
                return False
        return True

    def _fits(self, tensors: tuple[torch.Tensor, ...]) -> bool:
        size = sum(t.numel() * t.element_size() for t in tensors)
        if self.stored_bytes + size > self.max_bytes:
            return False
        self.stored_bytes += size
        return True

    def store_gram(self, name: str, gram: torch.Tensor) -> None:
        if name not in self.grams and self._fits((gram,)):
            self.grams[name] = gram

    def store_absmax(self, name: str, absmax: torch.Tensor) -> None:
        if name not in self.absmax and self._fits((absmax,)):
            self.absmax[name] = absmax

    def result(self, key: Hashable, compute: Callable[[], tuple[torch.Tensor, ...]]) -> tuple[Any, ...]:
        """The stored result for `key`, or `compute()` (stored when it fits). Call only on a matching model."""
        if key in self.results:
            self.hits += 1
            return self.results[key]
        self.misses += 1
        value = compute()
        if self._fits(value):
            self.results[key] = value
        return value
