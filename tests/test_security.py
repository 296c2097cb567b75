"""Security defaults: no remote code unless asked, no pickle execution, servers on loopback, no secrets in
MLflow, run directories that follow the user's umask."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import pytest

from autocompress.config import SearchConfig
from autocompress.errors import UserError
from autocompress.loading import load_model, model_task


def _saved_bert(path: Path) -> Path:
    load_model("random:bert").model.save_pretrained(path)
    return path


def test_remote_code_is_refused_unless_the_config_turns_it_on(tmp_path):
    model = _saved_bert(tmp_path / "custom")
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(model_type="my-custom-bert", auto_map={"AutoConfig": "modeling_custom.CustomConfig",
                                                       "AutoModel": "modeling_custom.CustomModel"})
    (model / "config.json").write_text(json.dumps(cfg))
    (model / "modeling_custom.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(UserError, match="trust_remote_code: true only if you trust its source"):
        model_task(str(model))
    with pytest.raises(UserError, match="trust_remote_code"):
        load_model(str(model))
    base = {"model": {"name": str(model)}, "space": {"quantize": {"bits": [8]}}}
    assert SearchConfig.from_dict(base).model.trust_remote_code is False  # the default


def test_pickled_weights_never_run_code(tmp_path):
    model = _saved_bert(tmp_path / "evil")
    (model / "model.safetensors").unlink()
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(model / "pytorch_model.bin", "wb") as f:
        pickle.dump({"bert.embeddings.word_embeddings.weight": Payload()}, f)
    with pytest.raises(UserError, match="weights_only=True"):
        load_model(str(model))
    assert not marker.exists()


def test_run_directory_follows_the_umask(tmp_path):
    from autocompress.search.driver import run_search
    from tests.support import make_config

    old = os.umask(0o077)
    try:
        run_search(make_config(tmp_path, budget={"n_trials": 2}), show_progress=False)
    finally:
        os.umask(old)
    written = [p for p in (tmp_path / "run").rglob("*")] + [tmp_path / "mlflow.db"]
    assert len(written) > 3
    for p in written:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o077 == 0, f"{p} is {oct(mode)}: readable or writable by others"


def _listening_addresses(port: int) -> list:
    """The addresses that TCP sockets in LISTEN state on `port` are bound to, machine-wide (Linux /proc)."""
    import ipaddress
    import sys

    found = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(path):
            continue
        for line in Path(path).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)  # 32-bit words in host byte order
            if sys.byteorder == "little":
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(raw)
            found.append(getattr(ip, "ipv4_mapped", None) or ip)
    return found


def test_ui_servers_listen_on_loopback_only(tmp_path):
    """`autocompress ui` with its defaults: the MLflow UI and optuna-dashboard it starts are bound to the
    loopback interface only (read from the machine's socket table, not from the command line)."""
    import shutil
    import subprocess
    import sys
    import time

    import optuna
    import yaml

    from tests.search.conftest import free_port
    from tests.support import stop_process_group

    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("reads the socket table from /proc/net/tcp (Linux)")
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "mlflow.db").touch()  # an empty SQLite store: the MLflow server creates its tables
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.storages.RDBStorage(storage)  # an Optuna storage with its tables and no study
    config = {"storage": storage, "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    exe = Path(sys.executable).parent / "optuna-dashboard"
    ports = [free_port()] + ([free_port()] if shutil.which("optuna-dashboard") or exe.exists() else [])
    extra = ["--dashboard-port", str(ports[1])] if len(ports) > 1 else ["--no-dashboard"]
    proc = subprocess.Popen([sys.executable, "-m", "autocompress", "ui", str(run), "--port", str(ports[0]), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not all(_listening_addresses(p) for p in ports):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"`autocompress ui` did not listen on ports {ports} within 180 s (exit {proc.poll()})")
            time.sleep(0.5)
        for port in ports:
            addresses = _listening_addresses(port)
            assert addresses and all(a.is_loopback for a in addresses), f"port {port} listens on {addresses}"
    finally:
        stop_process_group(proc)


def test_no_password_reaches_mlflow(tmp_path):
    """A storage URL with a password (PostgreSQL with trust auth ignores it) is logged with *** instead."""
    from mlflow import MlflowClient

    from autocompress.search.driver import run_search
    from tests.search.services import delete_studies, unique_name
    from tests.support import children, make_config

    url = os.environ.get("AUTOCOMPRESS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        from autocompress.search.storage import open_storage

        open_storage(url)
    except UserError:
        pytest.skip(f"no PostgreSQL at {url} (set AUTOCOMPRESS_TEST_POSTGRES)")
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    secret = "hunter2-" + unique_name("pw")
    name = unique_name("secret")
    config = make_config(tmp_path, budget={"n_trials": 1}, storage=f"{scheme}://{user}:{secret}@{host}",
                         study_name=name)
    try:
        run_search(config, show_progress=False)
        parent, kids = children(config.tracking.uri, study=name)
        client = MlflowClient(config.tracking.uri)
        logged = json.dumps([parent.data.params, parent.data.tags] + [[k.data.params, k.data.tags] for k in kids])
        client.download_artifacts(parent.info.run_id, "config.yaml", str(tmp_path / "mlflow-copy"))
        logged += (tmp_path / "mlflow-copy" / "config.yaml").read_text()
        assert secret not in logged and "***" in logged
    finally:
        delete_studies(url, name)


def _postgres() -> str:
    """The test PostgreSQL URL (no password; its trust auth accepts any), or skip."""
    from autocompress.search.storage import open_storage

    url = os.environ.get("AUTOCOMPRESS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        open_storage(url)
    except UserError:
        pytest.skip(f"no PostgreSQL at {url} (set AUTOCOMPRESS_TEST_POSTGRES)")
    return url


def _with_password(url: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user.split(':')[0]}:{password}@{host}"


def test_no_password_in_the_run_directory_or_the_output(tmp_path, capsys, monkeypatch):
    """A real search on a storage URL with a literal password: no file under tmp_path (the run directory, the
    MLflow store and its artifacts) and no line the search printed holds it. The run directory's config.yaml
    names ${AUTOCOMPRESS_STORAGE_PASSWORD} instead (one stderr line says so), and a resume from that file is
    refused, naming the variable, until it is set."""
    import yaml

    from autocompress.cli import main
    from tests.search.services import delete_studies, unique_name

    secret, env = "s3cr3t-test", "AUTOCOMPRESS_STORAGE_PASSWORD"
    url, name, run = _with_password(_postgres(), secret), unique_name("secret-rundir"), tmp_path / "run"
    monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("COLUMNS", "400")  # rich does not fold the last line
    cfg = tmp_path / "search.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"name": "random:bert"}, "space": {"quantize": {"bits": [4, 8]}},
        "data": {"calibration": {"n": 4}, "evaluation": {"n": 4}}, "budget": {"n_trials": 1},
        "storage": url, "study_name": name, "run_dir": str(run),
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}}))

    def leaks() -> list[str]:
        return [str(p) for p in tmp_path.rglob("*") if p.is_file() and p != cfg and secret.encode() in p.read_bytes()]

    try:
        assert main(["search", str(cfg), "--quiet"]) == 0
        out, err = capsys.readouterr()
        assert secret not in out + err and leaks() == []
        assert f"study: {_with_password(_postgres(), '***')}" in out
        assert "${" + env + "}" in (run / "config.yaml").read_text()
        assert len([line for line in err.splitlines() if env in line]) == 1, err
        assert main(["search", str(run / "config.yaml"), "--quiet", "--trials", "2"]) == 2
        assert "${" + env + "}, which is not set" in capsys.readouterr().err
        monkeypatch.setenv(env, secret)
        assert main(["search", str(run / "config.yaml"), "--trials", "2", "--json", "--quiet"]) == 0
        out, err = capsys.readouterr()
        assert sum(json.loads(out)["counts"].values()) == 2  # resumed: the study's second trial
        assert secret not in out + err and leaks() == []
    finally:
        delete_studies(url, name)


def test_libpq_reads_pgpassword_for_a_url_without_one(monkeypatch):
    """A postgresql storage URL without a password takes PGPASSWORD from the environment (libpq's own)."""
    from autocompress.search.storage import open_storage

    url = _postgres()
    monkeypatch.setenv("PGPASSWORD", "from-the-environment")
    engine = open_storage(url)._backend.engine
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection.info.password == "from-the-environment"


@pytest.mark.parametrize("section", [
    {"tracking": {"uri": "http://me:tr4ck-pw@127.0.0.1:1"}},
    {"storage": "postgresql://postgres:tr4ck-pw@127.0.0.1:1/test"},
], ids=["tracking-uri", "storage"])
def test_a_password_in_an_error_line_is_masked(tmp_path, capsys, section):
    import yaml

    from autocompress.cli import main

    cfg = tmp_path / "search.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": "random:bert"}, "space": {"quantize": {"bits": [8]}},
                                   "run_dir": str(tmp_path / "run"), **section}))
    assert main(["search", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "tr4ck-pw" not in err and ("me:***@" in err or "postgres:***@" in err), err
