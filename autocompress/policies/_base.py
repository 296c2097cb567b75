"""The policy contract and the calibration statistics that data-aware policies share.

A policy is one compression technique. `apply(model, plan, calibration)` changes `model` in place for the
plan entries the policy `handles`, and for no others. `apply_plan` runs the registered policies in
`ORDER`, each on the model as the previous ones left it. Data-aware methods (GPTQ, Wanda, whitened SVD,
activation-aware structured pruning) read input statistics through `Calibration.input_grams` (SmoothQuant
through `Calibration.input_absmax`), gathered
on the model as it stands at that stage (and kept in `Calibration.memo`, when there is one, while the model
is still exactly the base model: see memo.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Iterable, Mapping

import torch
from torch import nn

from autocompress.errors import UserError
from autocompress.modules import is_linear_like, weight_matrix
from autocompress.policies.grams import GramHooks
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.registry import Registry

if TYPE_CHECKING:
    from autocompress.policies.memo import BaseModelMemo


class Policy:
    """One technique. Subclasses set `name`, implement `handles` and `apply`.

    Contract: `apply` touches only the modules named by the entries it handles; an entry it handles
    ends up exactly as planned (bits on the grid, the planned share of zeros, the planned rank, the planned
    number of units removed); the model still runs; no layer grows. `needs_calibration(entry)` says whether
    an entry needs calibration batches; `apply` raises `UserError` if they are missing.
    """

    name: ClassVar[str]

    def handles(self, entry: LayerPlan) -> bool:
        raise NotImplementedError

    def needs_calibration(self, entry: LayerPlan) -> bool:
        return False

    def entries(self, plan: CompressionPlan) -> dict[str, LayerPlan]:
        return {k: v for k, v in plan.layers.items() if self.handles(v)}

    def apply(self, model: nn.Module, plan: CompressionPlan, calibration: "Calibration | None") -> None:
        raise NotImplementedError

    def require(self, calibration: "Calibration | None", layer: str, what: str) -> "Calibration":
        if calibration is None or not calibration.batches:
            raise UserError(f"plan layer {layer!r}: {what} needs calibration data; pass calibration batches "
                            "(the config's data.calibration) or choose a data-free method")
        return calibration


POLICIES: Registry[type[Policy]] = Registry("policy")

# structured removal first (shapes shrink), then zeros, then factorization, then activation smoothing (which
# rescales the weights the grid is fitted to), then the integer grid last
ORDER = ("structured", "sparsify", "lowrank", "smooth", "quantize")


@dataclass
class Calibration:
    """Tokenized batches fed as `model(**batch)`; padded positions are masked out of every statistic.
    `memo` (optional, one per base model) keeps what is computed on the unchanged base model (memo.py).
    `sequential`: GPTQ quantizes the transformer blocks one after another, each block's Hessians gathered
    from the outputs of the blocks before it as already quantized (quantize.py, blockwise.py), as the
    reference GPTQ does; False gathers every Hessian in one pass over the model before any is quantized.
    The config's `data.calibration.sequential` decides it for a search (null: True for causal LMs)."""

    batches: list[Mapping[str, torch.Tensor]]
    memo: "BaseModelMemo | None" = None
    sequential: bool = False

    def pristine(self, model: nn.Module) -> bool:
        """True when there is a memo and `model` is still exactly its base model (memo entries apply)."""
        return self.memo is not None and self.memo.matches(model)

    @torch.no_grad()
    def input_grams(self, model: nn.Module, modules: Mapping[str, nn.Module],
                    pristine: bool | None = None) -> dict[str, torch.Tensor]:
        """For each named Linear-like module, the Gram matrix X^T X (float32, [in, in]) of its inputs over
        all unmasked tokens, divided by the token count. diag() of it is the mean squared activation per
        input feature (Wanda's norm squared); the whole matrix is GPTQ's Hessian (up to a factor of 2).
        On a pristine model (`pristine(model)`, checked here when `pristine` is None) the memo's matrices
        are returned and only the missing ones gathered (then kept): the same values, without the passes."""
        if pristine is None:
            pristine = self.pristine(model)
        if pristine:
            known = {n: self.memo.grams[n] for n in modules if n in self.memo.grams}
            missing = {n: m for n, m in modules.items() if n not in known}
            fresh = self._gather(model, missing) if missing else {}
            for n, g in fresh.items():
                self.memo.store_gram(n, g)
            return {n: known[n] if n in known else fresh[n] for n in modules}
        return self._gather(model, modules)

    def _gather(self, model: nn.Module, modules: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
        """`input_grams` by one pass over the batches, with a hook on each module."""
        with GramHooks(modules) as hooks:
            for batch in self.batches:
                mask = batch.get("attention_mask")
                hooks.mask = mask.bool() if mask is not None else None
                model(**batch)
        return hooks.result()

    @torch.no_grad()
    def input_absmax(self, model: nn.Module, modules: Mapping[str, nn.Module],
                     pristine: bool | None = None) -> dict[str, torch.Tensor]:
        """For each named Linear-like module, max |x_j| (float32, [in]) of its inputs per input feature over
        all unmasked tokens (SmoothQuant's activation range; 0 for a feature never activated). Memoized on a
        pristine model like `input_grams` (the memo's `absmax` table)."""
        if pristine is None:
            pristine = self.pristine(model)
        known = {n: self.memo.absmax[n] for n in modules if n in self.memo.absmax} if pristine else {}
        missing = {n: m for n, m in modules.items() if n not in known}
        fresh = self._gather_absmax(model, missing) if missing else {}
        if pristine:
            for n, a in fresh.items():
                self.memo.store_absmax(n, a)
        return {n: known[n] if n in known else fresh[n] for n in modules}

    def _gather_absmax(self, model: nn.Module, modules: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
        """`input_absmax` by one pass over the batches, with a hook on each module."""
        peaks: dict[str, torch.Tensor] = {}
        state: dict[str, torch.Tensor | None] = {"mask": None}

        def hook(name: str):
            def fn(_mod: nn.Module, args: tuple) -> None:
                x = args[0].detach()
                mask = state["mask"]
                if mask is not None and x.dim() == 3 and x.shape[:2] == mask.shape:
                    x = x[mask]
                x = x.reshape(-1, x.shape[-1])
                if x.shape[0]:
                    peak = x.abs().amax(0).float()
                    peaks[name] = torch.maximum(peaks[name], peak) if name in peaks else peak
            return fn

        handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items()]
        try:
            for batch in self.batches:
                mask = batch.get("attention_mask")
                state["mask"] = mask.bool() if mask is not None else None
                model(**batch)
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in modules if n not in peaks]
        if missing:
            raise RuntimeError(f"calibration never reached {missing[0]!r}: is it used in the forward pass?")
        return dict(peaks)


def input_norms(grams: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-input-feature RMS activation ||x_j|| / sqrt(tokens), from the Gram matrices."""
    return {n: g.diagonal().clamp_min(0).sqrt() for n, g in grams.items()}


def modules_for(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    return {n: model.get_submodule(n) for n in names}


def linear_layer(model: nn.Module, name: str, technique: str) -> nn.Module:
    """The Linear-like module a plan entry names; `UserError` naming the entry if it is missing or not one."""
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        raise UserError(f"plan layer {name!r} is not a module of this model") from None
    if not is_linear_like(mod):
        raise UserError(f"plan layer {name!r} is a {type(mod).__name__}, not a Linear-like layer; "
                        f"{technique} applies to Linear layers only")
    return mod


def check_weight(name: str, module: nn.Module) -> torch.Tensor:
    w = weight_matrix(module)
    if not torch.isfinite(w).all():
        raise ValueError(f"layer {name!r} has non-finite weights")
    return w
