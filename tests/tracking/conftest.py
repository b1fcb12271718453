"""A real MLflow tracking server for the lineage tests, and reading it through its REST API (what its UI reads)."""

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

MLFLOW = str(Path(sys.executable).parent / "mlflow")


class Server:
    def __init__(self, url: str, proc: subprocess.Popen):
        self.url, self.proc = url, proc

    def get(self, endpoint: str, **query) -> dict:
        """GET /api/2.0/mlflow/<endpoint>?query, as JSON."""
        q = urllib.parse.urlencode(query)
        with urllib.request.urlopen(f"{self.url}/api/2.0/mlflow/{endpoint}?{q}") as r:
            return json.loads(r.read())

    def post(self, endpoint: str, body: dict) -> dict:
        req = urllib.request.Request(f"{self.url}/api/2.0/mlflow/{endpoint}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, bound_s: float = 180) -> None:
    """Until the server answers /health (it runs migrations first), or it exits, or the bound passes."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"mlflow server not healthy within {bound_s} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a sqlite store in a temporary folder, on a free loopback port."""
    base = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = base / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([MLFLOW, "server", "--backend-store-uri", f"sqlite:///{base / 'store.db'}",
                                 "--artifacts-destination", str(base / "artifacts"), "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "1"], stdout=out, stderr=subprocess.STDOUT,
                                cwd=base, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield Server(url, proc)
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
