"""Module surgery shared by the policies: find, replace and view Linear-like layers uniformly.

Linear-like means `nn.Linear` (weight [out, in]) or the `Conv1D` used by GPT-2 (weight [in, out]);
`weight_matrix` returns a view in the [out, in] layout for both, so a policy writes through it in place.
`LowRankLinear` is what a factorized layer becomes; it lives here so that every policy can see through it.
"""

from __future__ import annotations

import torch
from torch import nn


def is_conv1d(module: nn.Module) -> bool:
    """The transformers `Conv1D` (GPT-2): a Linear with its weight stored transposed as [in, out]."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight of a Linear-like module as a [out, in] tensor sharing storage with the parameter; of an
    `nn.Embedding`, its table [num_embeddings, embedding_dim] (rows are tokens, so a quantization group runs
    along one token's vector)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        return module.weight.data
    if is_conv1d(module):
        return module.weight.data.t()
    raise TypeError(f"{type(module).__name__} is not a Linear-like module or an embedding")


def in_out_features(module: nn.Module) -> tuple[int, int]:
    w = weight_matrix(module)
    return w.shape[1], w.shape[0]


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def as_linear(module: nn.Module) -> nn.Linear:
    """A plain `nn.Linear` with the same function (copies a Conv1D's transposed weight)."""
    if isinstance(module, nn.Linear):
        return module
    w = weight_matrix(module)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=module.bias is not None, device=w.device, dtype=w.dtype)
    lin.weight.data.copy_(w)
    if module.bias is not None:
        lin.bias.data.copy_(module.bias.data)
    return lin


class LowRankLinear(nn.Module):
    """y = up(down(x)): a rank-r factorization of a Linear. `down` is [r, in] (no bias), `up` is [out, r]."""

    def __init__(self, down: nn.Linear, up: nn.Linear) -> None:
        super().__init__()
        if down.out_features != up.in_features:
            raise ValueError(f"factor shapes do not chain: down out={down.out_features}, up in={up.in_features}")
        self.down = down
        self.up = up

    @property
    def rank(self) -> int:
        return self.down.out_features

    @property
    def in_features(self) -> int:
        return self.down.in_features

    @property
    def out_features(self) -> int:
        return self.up.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def weight_modules(module: nn.Module) -> list[nn.Module]:
    """The modules that carry the weights of a plan entry: itself (Linear-like or an embedding table), or both
    low-rank factors."""
    if isinstance(module, LowRankLinear):
        return [module.down, module.up]
    if is_linear_like(module) or isinstance(module, nn.Embedding):
        return [module]
    raise TypeError(f"{type(module).__name__} is not a Linear-like module or an embedding")
