"""`GramHooks`: the Gram matrices X^T X / tokens of some modules' inputs, gathered by forward pre-hooks.

One accumulator serves both ways of running calibration data: the whole model (`Calibration.input_grams`)
and one transformer block at a time (blockwise.py). Padded positions are left out: while `mask` (bool
[batch, seq], True = a real token) is set, an input of shape [batch, seq, features] keeps only its masked
rows; any other input shape counts every row.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn


class GramHooks:
    """Context manager: while open, every forward of one of `modules` (name -> module) adds its first input's
    X^T X (float32) to that name's sum. `mask` is the attention mask of the batch being run (set it before
    each batch). `result()` divides by each module's token count; a module never run raises RuntimeError."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.modules = dict(modules)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.mask: torch.Tensor | None = None
        self._handles: list = []
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (input, rows, X^T X)

    def _hook(self, name: str):
        def fn(_mod: nn.Module, args: tuple) -> None:
            x, g = self._gram(args[0])
            self.sums[name] = self.sums[name] + g if name in self.sums else g
            self.counts[name] = self.counts.get(name, 0) + x.shape[0]
        return fn

    def _gram(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked rows, their X^T X) of one input tensor. Modules that read the very same tensor object one after
        another (q/k/v of one attention, gate/up of one MLP) share one product: it is computed once."""
        if self._last is not None and self._last[0] is inputs:
            return self._last[1], self._last[2]
        x = inputs.detach()
        if self.mask is not None and x.dim() == 3 and x.shape[:2] == self.mask.shape:
            x = x[self.mask]
        x = x.reshape(-1, x.shape[-1]).float()
        g = x.T @ x
        self._last = (inputs, x, g)
        return x, g

    def __enter__(self) -> "GramHooks":
        self._handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in self.modules.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        self._last = None
        for h in self._handles:
            h.remove()
        self._handles = []

    def result(self) -> dict[str, torch.Tensor]:
        missing = [n for n in self.modules if n not in self.sums]
        if missing:
            raise RuntimeError(f"calibration never reached {missing[0]!r}: is it used in the forward pass?")
        return {n: self.sums[n] / max(self.counts[n], 1) for n in self.modules}
