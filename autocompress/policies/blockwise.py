"""`BlockRunner`: calibration data run through a model's transformer blocks one block at a time.

Sequential GPTQ (quantize.py) needs each block's input statistics from the blocks before it as they are after
quantization. Running the whole model once per block would cost a full forward per block; instead:
  1. `BlockRunner(model, batches)` runs the model on each batch only up to the first block (a forward pre-hook
     on it records what the model passes it, then stops the forward), with the KV cache off
     (`use_cache=False`, where the model's forward takes it). It keeps the hidden states, and the other
     arguments exactly as the model passed them: the attention mask in the form the block expects (or None
     where the block's attention is causal by itself), Llama's rotary `position_embeddings`, GPT-2's
     positional cache/mask arguments, and so on.
  2. `grams(i, modules)` runs block i alone on the kept inputs with Gram hooks (grams.py) on `modules`, the
     padded positions of each batch masked out as in `Calibration.input_grams`.
  3. `advance(i)` runs block i on the kept inputs and keeps its outputs as block i + 1's inputs.
So each block runs at most twice, on the cached activations, and never the layers outside the blocks beyond
the embeddings. A block may return a tensor or a tuple whose first item is the hidden states.

The arguments recorded at the first block are given to every block; a model whose blocks take different ones
(some transformers models alternate sliding-window and full attention, each with its own mask) is refused
with `UserError`, as is a model without a ModuleList of blocks.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from autocompress.errors import UserError
from autocompress.models import find_blocks
from autocompress.policies.grams import GramHooks


class _Reached(Exception):
    """Raised by the pre-hook on the first block once its inputs are recorded: the rest of the forward is skipped."""


@dataclass
class BlockInput:
    """What one batch brings to a block: `hidden` [batch, seq, width], the other positional `args` and the
    keyword `kwargs` the model passed the first block (`hidden_key` names the keyword the hidden states came
    by, None when they came first by position), and the batch's `mask` (bool [batch, seq]) or None."""

    hidden: torch.Tensor
    args: tuple
    kwargs: dict[str, Any]
    hidden_key: str | None
    mask: torch.Tensor | None

    def call(self, block: nn.Module) -> torch.Tensor:
        if self.hidden_key is None:
            out = block(self.hidden, *self.args, **self.kwargs)
        else:
            out = block(*self.args, **{**self.kwargs, self.hidden_key: self.hidden})
        return out[0] if isinstance(out, (tuple, list)) else out


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(prefix, blocks): the ModuleList `ModelInfo.block_prefix` names. `UserError` when there is none."""
    prefix, _ = find_blocks(model)
    if prefix is None:
        raise UserError(f"sequential GPTQ needs a model built of repeated blocks; {type(model).__name__} has none "
                        "(set data.calibration.sequential: false)")
    return prefix, model.get_submodule(prefix)


def _no_cache(model: nn.Module) -> dict[str, Any]:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"use_cache": False} if "use_cache" in params else {}


class BlockRunner:
    """See the module docstring. `inputs[b]` is batch b's `BlockInput` for the block `position` says."""

    def __init__(self, model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]]) -> None:
        self.prefix, self.blocks = block_list(model)
        kinds = {getattr(b, "attention_type", None) for b in self.blocks}
        if len(kinds) > 1:
            raise UserError(f"sequential GPTQ: the blocks of {type(model).__name__} take different attention inputs "
                            f"({', '.join(sorted(map(str, kinds)))}); set data.calibration.sequential: false")
        self.inputs = [self._capture(model, batch) for batch in batches]
        self.position = 0

    def _capture(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> BlockInput:
        seen: dict[str, Any] = {}

        def record(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
            seen["args"], seen["kwargs"] = args, kwargs
            raise _Reached

        handle = self.blocks[0].register_forward_pre_hook(record, with_kwargs=True)
        try:
            model(**batch, **_no_cache(model))
        except _Reached:
            pass
        finally:
            handle.remove()
        if not seen:
            raise RuntimeError(f"calibration never reached {self.prefix}.0: is it used in the forward pass?")
        args, kwargs = seen["args"], dict(seen["kwargs"])
        mask = batch.get("attention_mask")
        mask = mask.bool() if mask is not None else None
        if args:
            return BlockInput(args[0], tuple(args[1:]), kwargs, None, mask)
        key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
        hidden = kwargs.pop(key)
        return BlockInput(hidden, (), kwargs, key, mask)

    def _at(self, index: int) -> None:
        if index != self.position:
            raise RuntimeError(f"the kept activations are block {self.position}'s inputs, not block {index}'s")

    @torch.no_grad()
    def grams(self, index: int, modules: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
        """The Gram matrices (X^T X / tokens, float32) of the inputs of `modules` (inside block `index`) over
        every unmasked token, from block `index` run alone on its kept inputs."""
        self._at(index)
        block = self.blocks[index]
        with GramHooks(modules) as hooks:
            for inp in self.inputs:
                hooks.mask = inp.mask
                inp.call(block)
        return hooks.result()

    @torch.no_grad()
    def advance(self, index: int) -> None:
        """Run block `index` (as it is now) on its kept inputs; its outputs become block `index + 1`'s inputs."""
        self._at(index)
        block = self.blocks[index]
        for inp in self.inputs:
            inp.hidden = inp.call(block)
        self.position = index + 1
