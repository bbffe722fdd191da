"""infra/mlflow: PostgreSQL backend, S3 (MinIO) artifact store, and a tracking server whose exact
command line is run here against local stand-ins to show that a job holding only
MLFLOW_TRACKING_URI can log runs and artifacts through it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import infra_checks as ic
import pytest

COMPOSE = ic.INFRA / "mlflow" / "docker-compose.yaml"
VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def _compose() -> dict:
    (doc,) = ic.load_docs(COMPOSE)
    return doc


def _flags(command: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for word in command[2:]:
        key, sep, value = word.partition("=")
        out[key] = value if sep else None
    return out


def _resolve(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        name, op, default = m.groups()
        if name in env:
            return env[name]
        if op in (":-", "-"):
            return default
        raise AssertionError(f"{name} has no value and no default")
    return VAR.sub(sub, text)


def test_server_uses_postgres_and_an_s3_artifact_store():
    services = _compose()["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    cmd = services["mlflow"]["command"]
    assert cmd[:2] == ["mlflow", "server"]
    flags = _flags(cmd)
    backend = flags["--backend-store-uri"]
    assert re.fullmatch(r"postgresql://mlflow:\$\{POSTGRES_PASSWORD\}@postgres:5432/mlflow", backend), backend
    dest = flags["--artifacts-destination"]
    assert dest.startswith("s3://")
    assert "--serve-artifacts" in flags, "jobs must not need S3 credentials: the server proxies artifacts"
    env = services["mlflow"]["environment"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["AWS_ACCESS_KEY_ID"].startswith("${") and env["AWS_SECRET_ACCESS_KEY"].startswith("${")
    # The init service creates the very bucket the server writes to, before the server starts.
    assert services["bucket-init"]["environment"]["BUCKET"] == dest[len("s3://"):].split("/")[0]
    deps = services["mlflow"]["depends_on"]
    assert deps["postgres"]["condition"] == "service_healthy"
    assert deps["bucket-init"]["condition"] == "service_completed_successfully"


def test_secrets_come_from_the_env_file_not_the_compose_file():
    text = COMPOSE.read_text()
    used = {m.group(1) for m in VAR.finditer(text)}
    example = ic.INFRA / "mlflow" / ".env.example"
    defined = {ln.split("=", 1)[0] for ln in example.read_text().splitlines() if ln and not ln.startswith("#")}
    assert used <= defined, f"variables missing from .env.example: {used - defined}"
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/mlflow/.env"], cwd=ic.ROOT)
    assert ignored.returncode == 0, "infra/mlflow/.env (real secrets) must be git-ignored"


def test_every_server_flag_is_known_to_the_installed_mlflow():
    from mlflow.cli import server as server_command

    known = {o for p in server_command.params for o in (*p.opts, *p.secondary_opts)}
    assert {"--backend-store-uri", "--artifacts-destination"} <= known
    unknown = [f for f in _flags(_compose()["services"]["mlflow"]["command"]) if f not in known]
    assert not unknown, f"mlflow server does not accept {unknown}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The compose file's mlflow command with local stand-ins: SQLite for PostgreSQL, a folder for
    the S3 bucket, loopback instead of 0.0.0.0. Every other flag is kept as written."""
    tmp = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    replace = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--backend-store-uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "--artifacts-destination": (tmp / "bucket").as_uri(),
    }
    argv = [sys.executable, "-m", "mlflow", "server", "--workers", "1"]
    for flag, value in _flags(_compose()["services"]["mlflow"]["command"]).items():
        value = replace.get(flag, value)
        argv.append(flag if value is None else f"{flag}={_resolve(value, {})}")
    log = (tmp / "server.log").open("w")
    # Own session: the server forks uvicorn workers, and teardown stops the whole group.
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise AssertionError(f"mlflow server did not start: {(tmp / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield url, tmp
    _stop(proc)
    log.close()


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.mark.slow
def test_a_job_with_only_the_tracking_uri_logs_runs_and_artifacts(server, tmp_path):
    url, tmp = server
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    exp = client.create_experiment("infra-test")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "val_rwp", 0.42, step=3)
    ckpt = tmp_path / "checkpoint.txt"
    ckpt.write_text("weights")
    client.log_artifact(run.info.run_id, str(ckpt), artifact_path="model")
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts must be proxied by the server"
    stored = list((tmp / "bucket").rglob("checkpoint.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "weights"
    got = client.get_run(run.info.run_id).data.metrics
    assert got == {"val_rwp": 0.42}
    back = Path(client.download_artifacts(run.info.run_id, "model/checkpoint.txt", str(tmp_path)))
    assert back.read_text() == "weights"


@pytest.mark.slow
def test_server_rejects_hosts_outside_allowed_hosts(server):
    url, _ = server
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search?max_results=1",
                                 headers={"Host": "attacker.example:5000"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code in (400, 403)
    ok = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search?max_results=1",
                                headers={"Host": "mlflow:5000"})
    with urllib.request.urlopen(ok, timeout=10) as r:
        assert r.status == 200
