"""`ModelWorkspace`: one working copy of a base model, put back to the base model's exact state between trials.

A trial compresses a copy of the base model and throws it away. Deep-copying the model for every trial costs
as much as a third of a fast trial (an H100 measured copy 18 ms of a 40 ms MiniLM trial; on this project's
2-core CPUs a MiniLM deepcopy took 15-36 ms, a restore 8.5: benchmarks/trial_setup.py), while putting a used
copy back costs one tensor copy per parameter and buffer. A worker therefore deep-copies its base model
once, and `restore()` undoes whatever a plan did to that copy:

  - the module tree: every module that was in the copy at the start gets back its class (parametrizations
    change it), its attributes (head counts a structured policy wrote, hooks a quantize policy registered,
    grids, a distillation result) and its children, parameters and buffers (factorized layers, resized
    layers): modules a plan added are dropped;
  - the values: each parameter and buffer gets the base model's values again, copied into the storage the
    copy was made with (a policy that wrote through `weight.data` is undone; one that replaced the tensor
    gets the original storage back);
  - the parameters themselves are new `nn.Parameter` objects over that storage, with the base model's
    `requires_grad`: nothing a trial left on a parameter object (a gradient, a gradient hook) survives.

Contract: after `restore()`, `model` has the base model's module classes, attributes, parameter and buffer
names, ties, shapes, dtypes, devices and values (bit for bit), and `matches_base()` is True; applying a plan to
it gives what applying the plan to a fresh deep copy gives. The base model is only read. Attributes are put
back by reference: an object a module holds (the copy's own `config`, a plain tensor attribute that is not a
buffer) gets no field or value restored, so a policy must not change one in place, and none does.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

_CONTAINERS = (dict, OrderedDict, list, set)


def _shallow(value: Any) -> Any:
    """A copy of a container attribute (a hook table, `_modules`), so that what a trial adds to it is not kept."""
    return copy.copy(value) if isinstance(value, _CONTAINERS) else value


class ModelWorkspace:
    """See the module docstring. `model` is the working copy; call `restore()` before each reuse."""

    def __init__(self, base: nn.Module) -> None:
        self.base = base
        self.model = copy.deepcopy(base)
        self.dirty = False  # set by `checkout`, cleared by `restore`
        # every module of the copy, with its class and attributes as they were before any plan
        # (`_parameters` keeps only its keys: `restore` puts new parameters in, and the originals are not held)
        self._modules = [(m, type(m), _snapshot(m)) for m in self.model.modules()]
        base_params = dict(base.named_parameters(remove_duplicate=False))
        base_buffers = dict(base.named_buffers(remove_duplicate=False))
        # (owning module, attribute) -> (storage tensor of the copy, base tensor, requires_grad), tied ones once
        self._params: list[tuple[list[tuple[nn.Module, str]], torch.Tensor, torch.Tensor, bool]] = []
        by_id: dict[int, int] = {}
        for name, module, key, value in _named_slots(self.model, "_parameters"):
            if id(value) not in by_id:
                by_id[id(value)] = len(self._params)
                self._params.append(([], value.detach(), base_params[name].detach(), value.requires_grad))
            self._params[by_id[id(value)]][0].append((module, key))
        self._buffers = [(value, base_buffers[name]) for name, _, _, value in _named_slots(self.model, "_buffers")]

    def checkout(self) -> nn.Module:
        """The working copy in the base model's state, ready for one trial (restored first if it was used)."""
        if self.dirty:
            self.restore()
        self.dirty = True
        return self.model

    @torch.no_grad()
    def restore(self) -> nn.Module:
        """Put the working copy back to the base model's exact state (see the module docstring) and return it."""
        for module, cls, attrs in self._modules:
            module.__class__ = cls
            vars(module).clear()
            vars(module).update({k: _shallow(v) for k, v in attrs.items()})
        for slots, storage, base, requires_grad in self._params:
            _copy_into(storage, base)
            param = nn.Parameter(storage, requires_grad=requires_grad)
            for module, key in slots:
                module._parameters[key] = param
        for storage, base in self._buffers:
            _copy_into(storage, base)
        self.dirty = False
        return self.model

    @torch.no_grad()
    def matches_base(self) -> bool:
        """True when the working copy has the base model's module names and classes, forward hook counts,
        parameter and buffer names, ties (names holding one tensor), shapes, dtypes, devices, `requires_grad`
        and values exactly."""
        pairs = zip(self.model.named_modules(remove_duplicate=False), self.base.named_modules(remove_duplicate=False))
        if any(a[0] != b[0] or type(a[1]) is not type(b[1]) or _hooks(a[1]) != _hooks(b[1]) for a, b in pairs):
            return False
        for mine, theirs in ((self.model.named_parameters(remove_duplicate=False),
                              self.base.named_parameters(remove_duplicate=False)),
                             (self.model.named_buffers(remove_duplicate=False),
                              self.base.named_buffers(remove_duplicate=False))):
            a, b = dict(mine), dict(theirs)
            if a.keys() != b.keys() or _sharing(a) != _sharing(b):
                return False
            for key, value in a.items():
                other = b[key]
                if (value.shape != other.shape or value.dtype != other.dtype or value.device != other.device
                        or getattr(value, "requires_grad", False) != getattr(other, "requires_grad", False)
                        or not torch.equal(value, other)):
                    return False
        return True


def _sharing(tensors: dict[str, torch.Tensor]) -> set[frozenset[str]]:
    """The names grouped by the tensor object they hold: tied weights are one group."""
    groups: dict[int, set[str]] = {}
    for name, value in tensors.items():
        groups.setdefault(id(value), set()).add(name)
    return {frozenset(g) for g in groups.values()}


def _hooks(module: nn.Module) -> int:
    return len(module._forward_pre_hooks) + len(module._forward_hooks)


def _snapshot(module: nn.Module) -> dict[str, Any]:
    attrs = {k: _shallow(v) for k, v in vars(module).items()}
    attrs["_parameters"] = dict.fromkeys(module._parameters)
    return attrs


def _named_slots(model: nn.Module, table: str):
    """(qualified name, module, key, tensor) for every entry of each module's `_parameters` or `_buffers`,
    shared ones under each of their names."""
    for prefix, module in model.named_modules(remove_duplicate=False):
        for key, value in getattr(module, table).items():
            if value is not None:
                yield (f"{prefix}.{key}" if prefix else key), module, key, value


def _copy_into(storage: torch.Tensor, base: torch.Tensor) -> None:
    """Write `base`'s values into `storage`. A policy that resized the tensor in place (`.data` of another
    shape on the same object is not that: it swaps the tensor) is undone by giving it the base shape again."""
    if storage.shape != base.shape:
        storage.resize_(base.shape)
    storage.copy_(base)
