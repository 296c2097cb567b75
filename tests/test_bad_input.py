"""Bad input to `autocompress search`: exit 2, one line naming the key or file and the fix, no traceback, and
nothing written (no run directory, no Optuna database, no MLflow store)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from autocompress.cli import main

BASE = {"model": {"name": "random:bert"}, "space": {"quantize": {"bits": [4, 8]}},
        "data": {"calibration": {"n": 4}, "evaluation": {"n": 4}}, "budget": {"n_trials": 2},
        "backend": {"name": "local"}}


class _Payload:
    """Unpickled, it would run `touch MARKER` (a malicious pickle's `__reduce__`)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _model_dir(tmp: Path, corrupt: bool = False, config: bool = True, bin: str | None = None) -> str:
    """A real (random-weight) BERT directory; optionally without config.json or with a truncated weights file.
    `bin`: its weights as a pytorch_model.bin instead, a "pickle" or a torch "zip" checkpoint whose unpickling
    would create the file PWNED beside `tmp`, or "random" bytes."""
    from autocompress.loading import load_model

    path = tmp / "model"
    load_model("random:bert").model.save_pretrained(path)
    if corrupt:
        weights = path / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:4096])
    if not config:
        (path / "config.json").unlink()
    if bin is not None:
        (path / "model.safetensors").unlink()
        weights = {"bert.embeddings.word_embeddings.weight": _Payload(tmp.parent / "PWNED")}
        if bin == "pickle":
            (path / "pytorch_model.bin").write_bytes(pickle.dumps(weights))
        elif bin == "zip":
            torch.save(weights, path / "pytorch_model.bin")
        else:
            (path / "pytorch_model.bin").write_bytes(bytes(range(7, 256)) * 40)
    return str(path)


def _write(tmp: Path, name: str, data: bytes | str) -> str:
    path = tmp / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


def _yaml(data: dict) -> str:
    """A config as YAML text: no run_dir or tracking added, so the defaults (runs/NAME, ./mlflow.db) apply."""
    return yaml.safe_dump(data)


def _tree(root: Path) -> list[str]:
    """Every path under `root`, relative to it: what a refusal must leave unchanged."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# (id, function(tmp) -> config dict (run_dir and tracking in tmp added), raw YAML text, or a Path: the config
# path to give, text the one-line error must contain)
CASES = [
    ("unknown-key", lambda t: {**BASE, "sapce": {}}, "did you mean 'space'"),
    ("unknown-nested-key", lambda t: {**BASE, "space": {"quantize": {"bitz": [4]}}}, "did you mean 'bits'"),
    ("wrong-type", lambda t: {**BASE, "backend": {"workers": "two"}}, "backend.workers"),
    ("out-of-range-bits", lambda t: {**BASE, "space": {"quantize": {"bits": [9]}}}, "space.quantize.bits"),
    ("embeddings-bad-bits", lambda t: {**BASE, "space": {"embeddings": {"bits": [9]}}}, "space.embeddings.bits"),
    ("targets-match-nothing", lambda t: {**BASE, "space": {"quantize": {"bits": [4], "targets": ["nope"]}}},
     "space.quantize: found no"),
    ("embeddings-match-nothing", lambda t: {**BASE, "space": {"embeddings": {"targets": ["nope"]}}},
     "found no embedding tables"),
    ("targets-bad-regex", lambda t: {**BASE, "space": {"prune": {"sparsity": [0.5], "targets": ["re:(("]}}},
     "not a valid regular expression"),
    ("out-of-range-sparsity", lambda t: {**BASE, "space": {"prune": {"sparsity": [0.99]}}}, "0..0.95"),
    ("zero-trials", lambda t: {**BASE, "budget": {"n_trials": 0}}, "budget.n_trials"),
    ("empty-space", lambda t: {**BASE, "space": {}}, "the search space is empty"),
    ("constraint-unknown-metric", lambda t: {**BASE, "constraints": ["latency >= 3"]}, "unknown metric 'latency'"),
    ("objective-not-for-task", lambda t: {**BASE, "objectives": ["minimize perplexity"]},
     "'perplexity' is not produced for a model of task 'embedding'"),
    ("latency-without-target", lambda t: {**BASE, "objectives": ["maximize fidelity", "minimize latency_ms"]},
     "needs a target"),
    ("unknown-profile", lambda t: {**BASE, "target": {"profile": "h900"}}, "shipped profiles"),
    ("decode-on-an-encoder", lambda t: {**BASE, "target": {"profile": "cpu-local", "mode": "decode"}},
     "target.mode: decode needs a causal language model, and 'random:bert' is loaded for task 'embedding'; use "
     "target.mode: prefill, or a causal LM"),
    ("unknown-sampler", lambda t: {**BASE, "sampler": {"name": "cmaes"}}, "sampler.name"),
    ("model-missing", lambda t: {**BASE, "model": {"name": str(t / "nope")}}, "does not exist"),
    ("model-not-a-model", lambda t: {**BASE, "model": {"name": _model_dir(t, config=False)}}, "no config.json"),
    ("corrupt-safetensors", lambda t: {**BASE, "model": {"name": _model_dir(t, corrupt=True)}},
     "not a valid safetensors file"),
    ("bin-pickle-runs-no-code", lambda t: {**BASE, "model": {"name": _model_dir(t, bin="pickle")}},
     "pytorch_model.bin is a legacy pickle that holds pickled objects other than tensors; autocompress loads "
     "weights only with weights_only=True; convert it to safetensors"),
    ("bin-zip-runs-no-code", lambda t: {**BASE, "model": {"name": _model_dir(t, bin="zip")}},
     "pytorch_model.bin is a torch zip checkpoint that holds pickled objects other than tensors"),
    ("bin-random-bytes", lambda t: {**BASE, "model": {"name": _model_dir(t, bin="random")}},
     "pytorch_model.bin is not a PyTorch checkpoint (it starts with bytes 07 08 09 0a"),
    ("empty-texts", lambda t: {**BASE, "data": {"evaluation": {"source": _write(t, "e.txt", "\n\n")}}},
     "holds no texts"),
    ("texts-not-utf8", lambda t: {**BASE, "data": {"calibration": {"source": _write(t, "c.txt", b"\xff\xfe\xfa")}}},
     "not UTF-8"),
    ("storage-not-a-url", lambda t: {**BASE, "storage": "optuna.db"}, "is not a storage URL"),
    ("storage-unreachable", lambda t: {**BASE, "storage": "postgresql://postgres@127.0.0.1:1/test"}, "storage"),
    ("mlflow-unreachable", lambda t: {**BASE, "tracking": {"uri": "http://127.0.0.1:1"}}, "cannot be reached"),
    ("mlflow-writer", lambda t: {**BASE, "tracking": {"writer": "fork"}}, "tracking.writer: Input should be 'thread' or"),
    ("yaml-not-a-mapping", lambda t: "- model\n- space\n", "must be a mapping"),
    ("yaml-python-tag", lambda t: "model: !!python/object/apply:os.system ['true']\n", "safe_load refuses it"),
    ("yaml-syntax", lambda t: "model: {name: [unclosed\n", "not valid YAML"),
    ("pick-rule", lambda t: {**BASE, "pick": "smallest please"}, "pick"),
    ("gpus-for-cpu-trials", lambda t: {**BASE, "backend": {"name": "ray", "gpus_per_trial": 0.5}},
     "set backend.device: cuda"),
    ("cuda-on-ray-without-gpus", lambda t: {**BASE, "backend": {"name": "ray", "device": "cuda"}},
     "needs gpus_per_trial > 0"),
    # the run directory and the files a search creates (issue 27, 2)
    ("run-dir-is-a-file", lambda t: {**BASE, "run_dir": _write(t, "afile", "x")},
     "run_dir " + "'{t}/afile' is a file, not a directory"),
    ("run-dir-under-a-file", lambda t: {**BASE, "run_dir": _write(t, "afile", "x") + "/run"},
     "run_dir " + "'{t}/afile/run': '{t}/afile' is a file, not a directory"),
    ("run-dir-name-too-long", lambda t: {**BASE, "run_dir": str(t / ("d" * 300) / "run")},
     "is 300 bytes, longer than the file system's limit of 255"),
    ("study-name-too-long", lambda t: _yaml({**BASE, "study_name": "a" * 300}),
     "study_name: 300 bytes, too long for the name of the run directory"),
    ("study-name-escapes", lambda t: _yaml({**BASE, "study_name": "../../escaped"}),
     "study_name: '../../escaped' names the run directory (runs/STUDY_NAME), so it must be a plain name"),
    ("study-name-with-a-slash", lambda t: _yaml({**BASE, "study_name": "team/a"}), "study_name: 'team/a'"),
    ("storage-under-a-file", lambda t: {**BASE, "storage": f"sqlite:///{_write(t, 'afile', 'x')}/optuna.db"},
     "storage " + "'sqlite:///{t}/afile/optuna.db': '{t}/afile' is a file, not a directory"),
    ("mlflow-store-under-a-file", lambda t: {**BASE, "tracking": {"uri": f"sqlite:///{_write(t, 'afile', 'x')}/m.db"}},
     "tracking.uri " + "'sqlite:///{t}/afile/m.db': '{t}/afile' is a file, not a directory"),
    ("mlflow-dir-store-under-a-file", lambda t: {**BASE, "tracking": {"uri": f"{_write(t, 'afile', 'x')}/mlruns"}},
     "tracking.uri " + "'{t}/afile/mlruns': '{t}/afile' is a file, not a directory"),
    # (issue 27, 3)
    ("mlflow-unknown-scheme", lambda t: {**BASE, "tracking": {"uri": "foo://x"}},
     "tracking.uri 'foo://x': MLflow has no tracking store for scheme 'foo'; use one of"),
    # (issue 27, 8)
    ("storage-not-sqlite", lambda t: {**BASE, "storage": f"sqlite:///{_write(t, 'optuna.db', b'garbage' * 100)}"},
     "storage " + "'sqlite:///{t}/optuna.db' is not a SQLite database (truncated or overwritten?); move it away"),
    # (issue 27, 9, 10)
    ("config-is-a-directory", lambda t: t, "config '{t}' is a directory; give the path of a YAML file"),
    ("config-empty", lambda t: "", "is empty"),
    ("config-only-comments", lambda t: "# nothing yet\n", "is empty"),
    ("yaml-duplicate-key", lambda t: "model: {name: 'random:bert'}\nbudget: {n_trials: 2}\nspace: {}\n"
     "budget: {n_trials: 3}\n", "duplicate key 'budget' (lines 2 and 4)"),
    ("yaml-duplicate-nested-key", lambda t: "model: {name: 'random:bert'}\nspace:\n  quantize:\n    bits: [4]\n"
     "    bits: [8]\n", "duplicate key 'bits' (lines 4 and 5)"),
    ("huge-constraint-list", lambda t: {**BASE, "constraints": ["size_mb <= 1"] * 20000 + ["bogus"]},
     "constraint 'bogus' must read"),
    ("huge-constraint", lambda t: {**BASE, "constraints": ["size_mb <= " + "9" * 100_000 + " x"]},
     "constraint 'size_mb <= 999"),
]
if not torch.cuda.is_available():  # (on a GPU machine this config is good input)
    CASES.append(("cuda-without-a-gpu", lambda t: {**BASE, "backend": {"device": "cuda"}},
                  "backend.device: cuda, but torch sees no CUDA GPU"))


@pytest.mark.parametrize("make, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_search_refuses_bad_input(tmp_path, capsys, monkeypatch, make, expected):
    """Run from a working directory inside tmp_path, so that the default run_dir (runs/NAME) and MLflow store
    (./mlflow.db) of a raw-YAML case, and any path escaping them, would show up in the tree compared."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    data = make(work)
    cfg = work / "search.yaml"
    if isinstance(data, Path):
        cfg = data
    elif isinstance(data, dict):
        data = {"run_dir": str(tmp_path / "run"), "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}, **data}
        cfg.write_text(yaml.safe_dump(data))
    else:
        cfg.write_text(data)
    _refused(["search", str(cfg), "--quiet"], tmp_path, capsys, expected.format(t=work))


def _refused(argv: list[str], root: Path, capsys, expected: str) -> str:
    """`autocompress ARGV` exits 2 with one short line holding `expected`, and writes nothing under `root`."""
    before = _tree(root)
    capsys.readouterr()  # what setting the case up printed
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err[:2000]
    assert len(err) < 1000, f"{len(err)} characters: {err[:2000]}"  # echoed input is capped
    assert expected in err, err
    assert _tree(root) == before  # no run dir, no optuna.db, no mlflow.db
    assert not (root / "PWNED").exists()  # no pickle ran (tests/test_bad_input.py _model_dir)
    return err


def test_run_dir_on_a_read_only_file_system(tmp_path, capsys, monkeypatch):
    """A run_dir whose nearest existing ancestor cannot be written. Tests run as root, which may write any
    directory, and this machine has no read-only mount a test may use; so os.access is patched to say what it
    says on a read-only mount (False for W_OK), for that one directory only."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro and mode & os.W_OK
                        else real_access(p, mode, **kw))
    cfg = tmp_path / "search.yaml"
    cfg.write_text(yaml.safe_dump({**BASE, "run_dir": str(ro / "run"), "tracking": {"uri": "none"}}))
    _refused(["search", str(cfg), "--quiet"], tmp_path, capsys,
             f"run_dir '{ro}/run': '{ro}' is not writable by this user; choose a directory you can write")


def test_resume_over_a_truncated_optuna_db_changes_nothing(tmp_path, capsys):
    """A run directory whose optuna.db was cut short: refused naming the file, and config.yaml not rewritten."""
    import optuna

    run = tmp_path / "run"
    run.mkdir()
    db = run / "optuna.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(storage=f"sqlite:///{db}", study_name="search")
    db.write_bytes(db.read_bytes()[:8192])  # the SQLite header is intact, the tables are cut off
    (run / "config.yaml").write_text("the config of the first run\n")
    cfg = tmp_path / "search.yaml"
    cfg.write_text(yaml.safe_dump({**BASE, "run_dir": str(run), "tracking": {"uri": "none"}}))
    err = _refused(["search", str(cfg), "--quiet"], tmp_path, capsys, f"storage 'sqlite:///{db}' is a damaged SQLite")
    assert "start the server" not in err and "move it away" in err
    assert (run / "config.yaml").read_text() == "the config of the first run\n"


def test_resume_with_other_objectives_changes_nothing(tmp_path, capsys):
    """The run directory's study was created with other objectives: refused before config.yaml is rewritten."""
    import optuna

    run = tmp_path / "run"
    run.mkdir()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(storage=f"sqlite:///{run / 'optuna.db'}", study_name="search", directions=["maximize"])
    (run / "config.yaml").write_text("the config of the first run\n")
    cfg = tmp_path / "search.yaml"
    cfg.write_text(yaml.safe_dump({**BASE, "run_dir": str(run), "tracking": {"uri": "none"}}))
    _refused(["search", str(cfg), "--quiet"], tmp_path, capsys, "was created with objectives ['maximize']")
    assert (run / "config.yaml").read_text() == "the config of the first run\n"


def test_mlflow_stores_named_without_a_scheme_are_not_paths(tmp_path, monkeypatch):
    from autocompress.search.preflight import check_tracking

    monkeypatch.chdir(tmp_path)
    for uri in ("databricks", "databricks-uc", "uc", "mlruns", f"file://{tmp_path}/mlruns", "none"):
        check_tracking(uri)  # known to MLflow; a local directory that can be created here
    assert os.listdir(tmp_path) == []


def test_an_sqlite_file_that_is_not_an_optuna_storage(tmp_path, capsys):
    import sqlite3

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as con:
        con.execute("create table notes (text)")
    cfg = tmp_path / "search.yaml"
    cfg.write_text(yaml.safe_dump({**BASE, "run_dir": str(tmp_path / "run"), "storage": f"sqlite:///{other}",
                                   "tracking": {"uri": "none"}}))
    _refused(["search", str(cfg), "--quiet"], tmp_path, capsys,
             f"storage 'sqlite:///{other}' is a SQLite database but not an Optuna storage (its tables: notes)")


def test_plan_from_a_newer_version(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"autocompress_plan": 99, "layers": {}}))
    assert main(["apply", "random:bert", str(plan), "--eval", "size"]) == 2
    err = capsys.readouterr().err.strip()
    assert "version 99" in err and "upgrade" in err and len(err.splitlines()) == 1, err


def test_no_traceback_from_the_real_command(tmp_path):
    """The same refusal from a real process: stderr is the one line, and the exit status is 2."""
    cfg = tmp_path / "search.yaml"
    cfg.write_text(yaml.safe_dump({**BASE, "sapce": {}}))
    proc = subprocess.run([sys.executable, "-m", "autocompress", "search", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "did you mean 'space'" in proc.stderr


@pytest.mark.parametrize("command", [
    ["latency", "calibrate", "--model", "random:bert", "--mode", "decode", "--out", "{tmp}/p.yaml"],
    ["latency", "predict", "{tmp}/plan.json", "--model", "random:bert", "--profile", "cpu-local", "--mode", "decode"],
    ["latency", "predict", "{tmp}/search.yaml", "--profile", "cpu-local", "--mode", "decode"],
], ids=["calibrate", "predict-plan", "predict-config"])
def test_latency_refuses_decode_on_an_encoder(tmp_path, capsys, command):
    (tmp_path / "plan.json").write_text(json.dumps({"autocompress_plan": 1, "layers": {}}))
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(BASE))
    before = sorted(os.listdir(tmp_path))
    assert main([part.format(tmp=tmp_path) for part in command]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: --mode: decode needs a causal language model") and len(err.splitlines()) == 1
    assert "use --mode prefill, or a causal LM" in err and captured.out == ""
    assert sorted(os.listdir(tmp_path)) == before  # no profile written
