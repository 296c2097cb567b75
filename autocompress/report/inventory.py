"""The model's layer inventory for a report, from its config alone: no weights are read.

A report uses it to list the layers a plan leaves alone and to turn an absolute rank into a fraction of
min(in, out). When the config cannot be read offline (a hub name not in the cache, a model needing remote
code that is not trusted) the report falls back to the plan's own keys.
"""

from __future__ import annotations

from typing import Any

from autocompress.models import ModelInfo


def model_inventory(model_section: Any) -> ModelInfo | None:
    """`ModelInfo` for `config.model` (a `ModelSection`) built on the meta device
    (`loading.meta_inventory`), or None when the model's config cannot be read from disk."""
    from autocompress.loading import meta_inventory

    try:
        return meta_inventory(model_section.name, model_section.task, model_section.trust_remote_code,
                              local_files_only=True)
    except Exception:  # any failure only means the report shows the plan's own layers
        return None
