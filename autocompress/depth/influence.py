"""Block Influence (ShortGPT, Men et al. 2024): how much a transformer block changes the hidden states passing
through it, measured on calibration text.

  BI_i = 1 - mean over tokens t of cos(x_i[t], y_i[t])

where x_i is block i's input hidden state and y_i its output, for every non-padding token of the calibration
batches. A block whose output points where its input did (BI near 0) mostly passes the residual stream on, and
dropping it costs least; `influence_order` lists the blocks least influential first, the order in which a
search's `space.depth` drops them. The hidden states are read with forward hooks on the blocks themselves, so
the measure is the same for decoders and encoders, whatever the model returns.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn


def _hidden(value: Any) -> torch.Tensor | None:
    """The hidden-state tensor of a block's input or output (a tensor, or the first item of a tuple)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


@torch.no_grad()
def block_influence(model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]], block_prefix: str) -> list[float]:
    """[BI_0, ..., BI_{n-1}] of the blocks in `model.get_submodule(block_prefix)` over `batches` (tokenized, with
    an attention_mask; on the model's device), each in [0, 2]. The model is run in eval mode and left in the mode
    it was in. Raises ValueError when a block's input or output is not a hidden-state tensor."""
    blocks = model.get_submodule(block_prefix)
    current: dict[int, torch.Tensor] = {}

    def hook(index: int):
        def fn(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x = _hidden(args) if args else kwargs.get("hidden_states")
            y = _hidden(output)
            if x is None or y is None or x.shape != y.shape:
                raise ValueError(f"{block_prefix}.{index}: its input and output are not hidden states of one shape")
            current[index] = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
        return fn

    handles = [b.register_forward_hook(hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    sums, tokens = [0.0] * len(blocks), 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            current.clear()
            model(**batch)
            mask = batch["attention_mask"].bool()
            for i in range(len(blocks)):
                sums[i] += float(current[i][mask].double().sum())
            tokens += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if tokens == 0:
        raise ValueError("block influence: the calibration batches hold no token")
    return [1.0 - s / tokens for s in sums]


def influence_order(scores: Sequence[float]) -> list[int]:
    """Block indices by ascending influence (the first is the cheapest to drop); ties by index."""
    return sorted(range(len(scores)), key=lambda i: (scores[i], i))
