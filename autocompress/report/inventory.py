"""The model's layer inventory for a report, from its config alone: no weights are read.

The model is built on PyTorch's `meta` device (shapes, no storage) from its `config.json`, and taken
inventory of with `inspect_model`. A report uses it to list the layers a plan leaves alone and to turn an
absolute rank into a fraction of min(in, out). When the config cannot be read offline (a hub name not in
the cache, a model needing remote code that is not trusted) the report falls back to the plan's own keys.
"""

from __future__ import annotations

import warnings
from typing import Any

from autocompress.models import ModelInfo


def model_inventory(model_section: Any) -> ModelInfo | None:
    """`ModelInfo` for `config.model` (a `ModelSection`) built on the meta device, or None when the
    model's config cannot be read from disk."""
    try:
        import torch
        import transformers

        from autocompress import models

        transformers.logging.set_verbosity_error()
        spec, trust = model_section.name, model_section.trust_remote_code
        if spec.startswith("random:"):
            task = models.model_task(spec, model_section.task)
            cfg = dict(models._RANDOM[models._random_kind(spec)])
            config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        else:
            config = transformers.AutoConfig.from_pretrained(models._model_path(spec), local_files_only=True,
                                                             trust_remote_code=trust)
            task = models._task_from_config(config) if model_section.task == "auto" else model_section.task
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = models._auto_class(task).from_config(config, trust_remote_code=trust)
        return models.inspect_model(model, task)
    except Exception:  # any failure only means the report shows the plan's own layers
        return None
