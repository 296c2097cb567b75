"""Sequential GPTQ: the quantize policy's entries applied block by block, as the reference GPTQ does.

Frantar et al. (2022) quantize a transformer one block at a time, each block's Hessians taken from the
outputs of the blocks before it as already quantized, so a block's GPTQ corrects for the error the earlier
blocks left in its inputs. `quantize_sequentially` orders the quantize policy's work that way:
  1. the entries outside the blocks that need no calibration (RTN layers, embedding tables, a tied LM head):
     their weights do not depend on data, and any that feed the blocks are then in place for them;
  2. for each block in order: the Gram matrices of its data-aware layers from the block run alone on its
     inputs (blockwise.py), all of its entries quantized (weights and activation quantization), then the block
     run again to give the next block's inputs. Blocks after the last one with a data-aware layer are
     quantized without being run;
  3. the data-aware entries outside the blocks (e.g. a GPTQ LM head), from one ordinary calibration pass over
     the model with every block quantized.
The model as earlier policies left it (pruned, factorized) is what the blocks run: their effect is in place.

Memo (memo.py): on a model still exactly the memo's base model, each layer's result is kept under its entry
and a fingerprint of everything quantized before its block: the entries of step 1 and of every earlier block
(for step 3: of every block). That is all a block's inputs depend on, so a result is reused only where
recomputing it would give the same bits. A block whose data-aware layers are all remembered is not run for
Grams, only to advance.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Mapping

import torch
from torch import nn

from autocompress.plan import LayerPlan
from autocompress.policies._base import Calibration
from autocompress.policies.blockwise import BlockRunner, block_list

# quantize(entry name, grams by weight-module name, memo context)
Quantize = Callable[[str, Mapping[str, torch.Tensor], tuple], None]


def _block_of(prefix: str, name: str) -> int | None:
    if not name.startswith(prefix + "."):
        return None
    return int(name[len(prefix) + 1:].split(".")[0])


class _Fingerprint:
    """A running hash of the entries quantized so far, in the order they were."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def add(self, entries: Mapping[str, LayerPlan]) -> None:
        for name in sorted(entries):
            self._hash.update(json.dumps([name, entries[name].to_dict()], sort_keys=True).encode())
        self._hash.update(b"|")

    def context(self) -> tuple:
        return ("sequential", self._hash.copy().hexdigest())


@torch.no_grad()
def quantize_sequentially(model: nn.Module, entries: Mapping[str, LayerPlan],
                          modules: Mapping[str, Mapping[str, nn.Module]], calibration: Calibration,
                          data_aware: Callable[[LayerPlan], bool], known: Callable[[str, tuple], set[str]],
                          quantize: Quantize) -> None:
    """Apply the quantize policy's `entries` in the order of the module docstring. `modules[name]` are the
    weight modules of entry `name` by full name; `data_aware(entry)` says whether an entry needs Gram matrices;
    `known(name, context)` which of its weight modules the memo holds a result for under `context` (they need
    none); `quantize(name, grams, context)` applies one entry."""
    prefix, blocks = block_list(model)
    by_block: dict[int, dict[str, LayerPlan]] = {}
    outside: dict[str, LayerPlan] = {}
    for name, e in entries.items():
        b = _block_of(prefix, name)
        (outside if b is None else by_block.setdefault(b, {}))[name] = e
    fingerprint = _Fingerprint()
    early = {n: e for n, e in outside.items() if not data_aware(e)}
    for name in early:
        quantize(name, {}, ())
    fingerprint.add(early)
    aware_blocks = [b for b, es in by_block.items() if any(data_aware(e) for e in es.values())]
    last = max(aware_blocks, default=-1)
    runner = BlockRunner(model, calibration.batches) if last >= 0 else None
    for index in range(len(blocks)):
        mine = by_block.get(index, {})
        context = fingerprint.context()
        grams: dict[str, torch.Tensor] = {}
        if index <= last:
            wanted = {n: m for name, e in mine.items() if data_aware(e)
                      for n, m in modules[name].items() if n not in known(name, context)}
            if wanted:
                grams = runner.grams(index, wanted)
        for name, e in mine.items():
            quantize(name, grams if data_aware(e) else {}, context if data_aware(e) else ())
        fingerprint.add(mine)
        if index < last:
            runner.advance(index)
    runner = None  # the kept activations are freed before the last pass
    late = {n: e for n, e in outside.items() if data_aware(e)}
    if late:
        context = fingerprint.context()
        wanted = {n: m for name in late for n, m in modules[name].items() if n not in known(name, context)}
        grams = calibration.input_grams(model, wanted, pristine=False) if wanted else {}
        for name in late:
            quantize(name, grams, context)
