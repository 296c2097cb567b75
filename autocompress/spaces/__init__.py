"""Search spaces: turn an Optuna trial into a CompressionPlan without touching weights (the search issue).

`SearchSpace` is the contract (`sample`, `plan_from_params`, `units`, `uniform_plans`); `ConfigSpace` is the
space a config's `space:` section describes.
"""

from autocompress.spaces._base import SearchSpace
from autocompress.spaces.config_space import ConfigSpace

__all__ = ["ConfigSpace", "SearchSpace"]
