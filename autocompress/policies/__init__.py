"""Policies: apply a CompressionPlan to an nn.Module (see `_base.Policy` for the contract).

Importing this package registers every policy in `POLICIES`; `apply_plan` composes them in `ORDER`.
"""

from autocompress.policies import lowrank, quantize, smooth, sparsify, structured  # noqa: F401  (register)
from autocompress.policies._base import ORDER, POLICIES, Calibration, Policy
from autocompress.policies.apply import apply_plan

__all__ = ["ORDER", "POLICIES", "Calibration", "Policy", "apply_plan"]
