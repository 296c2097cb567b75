"""Policies: apply a CompressionPlan to an nn.Module. See `_base.Policy` for the contract."""
