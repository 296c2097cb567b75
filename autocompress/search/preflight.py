"""Checks a search runs before it writes anything: bad input fails fast, in one line, leaving no run
directory, no Optuna study and no MLflow run behind.

`preflight(config) -> task` checks, in order and cheaply (no weights are loaded but a legacy-pickle .bin):
  the run directory (a directory, or one it can create, that this process writes: paths.py), the model (its
  directory, config.json, the task it implies, every *.safetensors header or else its pytorch_model*.bin read
  weights-only, trust_remote_code), the metrics against that task, `target.mode: decode` against it (a causal
  LM only), the search space against the model's inventory (built on the `meta` device: selectors that match
  nothing, choices that fit no layer), the calibration / evaluation / label files, the Optuna storage URL (a
  server storage is opened; a SQLite or journal file must be writable where it is, and an existing SQLite file
  an Optuna storage), the MLflow tracking URI (a scheme MLflow has a store for; an http server must answer; a
  SQLite file or a store directory writable where it is) and `backend.device: cuda` (torch must see a GPU
  here). Each failure is a `UserError` naming the key or file and the fix.

When every check has passed, a GGUF model (a .gguf file, `SmolLM2-135M-Instruct`) is converted into the GGUF
cache (gguf_cache.py) here, on the driver, once, if the cache does not hold it yet: the workers started after
it only read the converted directory (no worker dequantizes the file, and none waits on another's conversion;
a worker on another machine of an existing Ray cluster has its own cache). This is the one write of a
preflight, and it goes to the cache, never to the run directory.
"""

from __future__ import annotations

import glob
import os
import re

from autocompress.config import SearchConfig
from autocompress.errors import UserError, echo
from autocompress.secrets import mask_url


MLFLOW_NAMED_STORES = ("databricks", "databricks-uc", "uc")  # tracking URIs without a scheme that are no path


def check_weight_files(spec: str) -> None:
    """Read the header of every *.safetensors file of a model directory (a truncated or corrupt file fails
    here, in milliseconds, instead of on a worker), and the pytorch_model*.bin files of one without
    safetensors the weights-only way (checkpoints.py: a pickle other than tensors is refused, never run)."""
    from autocompress.checkpoints import check_bin_files
    from autocompress.loading import MINILM_ALIASES, minilm_path

    path = (minilm_path() or spec) if spec in MINILM_ALIASES else spec
    if spec.startswith("random:") or not os.path.isdir(path):
        return
    from safetensors import safe_open

    for file in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        try:
            with safe_open(file, "pt") as handle:
                handle.keys()
        except Exception as exc:  # SafetensorError, OSError
            raise UserError(f"model {spec!r}: {os.path.basename(file)} is not a valid safetensors file ({exc}); "
                            "re-download or re-save the model") from None
    check_bin_files(path, spec)


def check_data(config: SearchConfig) -> None:
    """Every text and label file the search reads can be read and is not empty (builtin always can)."""
    from autocompress.data import load_labeled, load_texts

    d = config.data
    for key, section in (("data.calibration", d.calibration), ("data.evaluation", d.evaluation)):
        try:
            load_texts(section.source, n=section.n, seed=section.seed)
        except UserError as exc:
            raise UserError(f"{key}: {exc}") from None
    if d.labels:
        try:
            load_labeled(d.labels)
        except UserError as exc:
            raise UserError(f"data.labels: {exc}") from None


def check_run_dir(path: str) -> None:
    """The run directory is a directory, or can be created as one, that this process writes (paths.py)."""
    from autocompress.paths import check_dir

    check_dir(path, f"run_dir {echo(path)}")


def check_storage(url: str) -> None:
    """A storage URL that names a server (PostgreSQL, MySQL, Redis) must open now. A SQLite or journal file
    is created on first use: its place must be writable (paths.py), and an existing SQLite file must be a
    SQLite database holding an Optuna storage (`storage.check_sqlite_file`; only read). `UserError` for a
    string that is not a storage URL."""
    from autocompress.paths import check_file
    from autocompress.search.storage import check_sqlite_file, display_url, journal_path, open_storage, \
        sqlite_path, storage_kind

    kind = storage_kind(url)
    if kind in ("rdb", "redis"):
        open_storage(url)
        return
    path = journal_path(url) if kind == "journal" else sqlite_path(url)
    if path is not None:
        check_file(path, f"storage {echo(display_url(url))}")
        check_sqlite_file(url)


def check_device(config: SearchConfig) -> None:
    """`backend.device: cuda` needs a GPU that torch sees, where the workers run on this machine (the local
    backend, or the ray backend's embedded cluster); an existing Ray cluster places its GPU actors itself."""
    b = config.backend
    if b.device != "cuda" or (b.name == "ray" and b.address is not None):
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError("backend.device: cuda, but torch sees no CUDA GPU on this machine "
                        f"(torch {torch.__version__}, torch.cuda.is_available() is False); set backend.device: cpu")


def check_tracking(uri: str) -> None:
    """MLflow has a tracking store for the URI's scheme; an http(s) MLflow server must answer within ~5 s (the
    same check `Tracker.open` makes); a SQLite file or a store directory must be writable where it is."""
    if uri == "none":
        return
    check_tracking_scheme(uri)
    from autocompress.paths import check_dir, check_file
    from autocompress.search.storage import display_url, sqlite_path

    label = f"tracking.uri {echo(display_url(uri))}"
    if sqlite_path(uri) is not None:
        check_file(sqlite_path(uri), label)
    elif uri.startswith("file:") or not (re.match(r"^[A-Za-z][\w+.-]*:", uri) or uri in MLFLOW_NAMED_STORES):
        check_dir(re.sub(r"^file:(//)?", "", uri), label)
    if not uri.startswith(("http://", "https://")):
        return
    import mlflow

    from autocompress.search.tracking.runs import _env

    try:
        with _env(MLFLOW_HTTP_REQUEST_TIMEOUT="5", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                  MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="0"):
            mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # requests, urllib3 and MlflowException all mean the same here
        errno = re.search(r"\[Errno -?\d+\] [^'\")\]]+", str(exc))
        reason = errno.group(0) if errno else (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"tracking.uri {mask_url(uri)!r} cannot be reached: {reason}; start the MLflow server or set "
                        "tracking.uri: none") from None


def check_tracking_scheme(uri: str) -> None:
    """`UserError` naming the supported schemes when MLflow has no tracking store for `uri`'s: asks MLflow's
    own registry of tracking stores (the one `MlflowClient` builds its store from, plugins included)."""
    from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry as registry
    except ImportError:  # MLflow moved it: the store is built, and refused, when the search opens it
        return
    try:
        registry.get_store_builder(uri)
    except UnsupportedModelRegistryStoreURIException as exc:
        from autocompress.search.storage import display_url

        scheme = uri.split(":", 1)[0]
        schemes = ", ".join(s for s in exc.supported_uri_schemes if s) + " or a local path"
        raise UserError(f"tracking.uri {echo(display_url(uri))}: MLflow has no tracking store for scheme "
                        f"{echo(scheme, 40)}; use one of {schemes} (e.g. sqlite:///mlflow.db, "
                        "http://127.0.0.1:5000), or tracking.uri: none") from None


def preflight(config: SearchConfig) -> str:
    """Run every check of the module docstring; return the model's task."""
    from autocompress.loading import convert_gguf_once, meta_inventory
    from autocompress.spaces import ConfigSpace

    check_run_dir(config.run_dir)
    m = config.model
    info = meta_inventory(m.name, task=m.task, trust_remote_code=m.trust_remote_code)  # config.json only
    check_weight_files(m.name)
    config.check_task(info.task)
    if config.target is not None:
        from autocompress.evaluators.latency._base import check_mode

        check_mode(config.target.mode, info.task, m.name, "target.mode")
    ConfigSpace(config.space, info, config.target_format)  # selectors matching nothing, choices fitting no layer
    check_data(config)
    check_storage(config.storage)
    check_tracking(config.tracking.uri)
    check_device(config)
    if config.pick:
        from autocompress.search.pareto import PickRule

        PickRule.parse(config.pick)
    convert_gguf_once(m.name)  # last: bad input never waits for a conversion
    return info.task
