"""`gemctl mlflow serve`: an MLflow tracking server on the project's store, that the jobs of a cluster log to."""

import json
import socket

import pytest
import requests

from tests.pipeline.project_copy import gemctl, make_project

from .server import Server, command_line, descendants, free_port, listening, start
from .writers import JOBS, assert_nothing_lost, run_writers


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A project with its store served on a free loopback port (2 server processes)."""
    project = make_project(tmp_path_factory.mktemp("project"))
    server = start(project, "--port", str(free_port()), "--workers", "2")
    assert isinstance(server, Server), server.stdout + server.stderr
    yield project, server
    out, err = server.stop()
    assert out.strip().splitlines()[-1] == "server stopped", out + err
    assert listening(server.port) == set()  # the whole server stopped, workers included


def test_it_binds_loopback_by_default_and_says_so(served):
    project, server = served
    assert listening(server.port) == {"127.0.0.1"}
    assert server.lines[0] == f"starting MLflow's server on 127.0.0.1:{server.port} (2 worker(s))..."
    assert server.lines[1] == (f"serving MLflow at http://127.0.0.1:{server.port} (loopback only: jobs on this "
                               "machine can log here, other machines cannot)")
    db, artifacts = (project / "mlruns" / "mlflow.db").resolve(), (project / "mlruns" / "artifacts").resolve()
    assert server.lines[2] == f"store sqlite:///{db}; artifacts in {artifacts}"
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert requests.get(f"{server.url}/health", timeout=30).text == "OK"


@pytest.mark.slow
def test_sixteen_writer_processes_lose_nothing_through_the_server(served, tmp_path):
    project, server = served
    failures, _ = run_writers(server.url, tmp_path, JOBS)
    assert failures == []
    assert_nothing_lost(server.url, JOBS)
    # kept where the server said: the project's own store
    assert_nothing_lost(f"sqlite:///{(project / 'mlruns' / 'mlflow.db').resolve()}", JOBS)


@pytest.mark.slow
def test_a_training_job_logs_through_the_server_and_the_server_serves_its_run(served):
    project, server = served
    r = gemctl(project, "train", "stage1", "--recipe", "ci", "-o", "stages.stage1.steps=2", "--tracking-uri",
               server.url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"mlflow runs in {server.url}" in r.stdout  # data and stage1: both through the server
    run_id = json.loads((project / "runs/ci/stage1/summary.json").read_text())["mlflow_run_id"]
    # MLflow's REST API, as the UI and any client read it
    run = requests.get(f"{server.url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=30).json()["run"]
    assert run["info"]["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["gemctl.stage"] == "stage1" and tags["gemctl.recipe"] == "ci"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["stages.stage1.steps"] == "2"
    history = requests.get(f"{server.url}/api/2.0/mlflow/metrics/get-history",
                           params={"run_id": run_id, "metric_key": "loss"}, timeout=30).json()["metrics"]
    assert sorted(m["step"] for m in history) == [1, 2]


def test_another_host_is_bound_as_asked_with_a_warning(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "recipes").mkdir()
    server = start(tmp_path, "--host", "0.0.0.0", "--port", str(free_port()), "--workers", "1", "--store",
                   str(tmp_path / "served.db"))
    assert isinstance(server, Server), server.stdout + server.stderr
    try:
        assert listening(server.port) == {"0.0.0.0"}
        assert server.lines[1] == (f"serving MLflow at http://{socket.getfqdn()}:{server.port} (bound to 0.0.0.0: "
                                   "reachable from other machines)")
        assert server.lines[2].startswith(f"store sqlite:///{tmp_path / 'served.db'}; ")
        # the store's URL (a database URL may hold a password) is on no command line other users can read
        servers = [command_line(p) for p in descendants(server.proc.pid)]
        assert any("mlflow" in c for c in servers) and not any("served.db" in c for c in servers), servers
    finally:
        _, err = server.stop()
    warnings = [x for x in err.splitlines() if x.startswith("warning:")]
    assert warnings == [f"warning: serving on 0.0.0.0: anyone who can reach this machine on port {server.port} can "
                        "read and change every run in the store (MLflow's server has no login); on a shared cluster "
                        "prefer the default 127.0.0.1 and an SSH tunnel"]


# --- bad input: one line, exit 2, nothing started ----------------------------------------------------------------
def _refused(r, needle: str) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    assert needle in r.stderr, r.stderr


@pytest.fixture
def bare(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "recipes").mkdir()
    return tmp_path


def test_a_store_that_cannot_be_reached_is_named(bare):
    r = gemctl(bare, "mlflow", "serve", "--store", "postgresql://gem:s3cret@127.0.0.1:1/runs")
    _refused(r, "--store 'postgresql://gem:***@127.0.0.1:1/runs': ")
    assert "s3cret" not in r.stdout + r.stderr


def test_a_sqlite_store_in_a_folder_that_cannot_exist_is_refused(bare):
    (bare / "a-file").write_text("")
    r = gemctl(bare, "mlflow", "serve", "--store", str(bare / "a-file" / "mlflow.db"))
    _refused(r, f"--store 'sqlite:///{bare}/a-file/mlflow.db': the database's folder {bare}/a-file cannot be created")


def test_a_server_url_is_not_a_store_to_serve(bare):
    r = gemctl(bare, "mlflow", "serve", "--store", "http://127.0.0.1:5000")
    _refused(r, "--store 'http://127.0.0.1:5000': not a database")


def test_a_port_in_use_is_refused(bare):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = gemctl(bare, "mlflow", "serve", "--port", str(port))
    _refused(r, f"cannot serve on 127.0.0.1:{port} (Address already in use): choose another --port")
    assert not (bare / "mlruns" / "artifacts").exists()


def test_a_tracking_uri_where_no_server_answers_is_refused_before_anything_runs(tmp_path):
    project = make_project(tmp_path / "p")
    port = free_port()
    r = gemctl(project, "train", "stage1", "--recipe", "ci", "--tracking-uri", f"http://127.0.0.1:{port}")
    _refused(r, f"--tracking-uri 'http://127.0.0.1:{port}': no MLflow server answers there (connection refused): "
                "start one (gemctl mlflow serve) or fix the URI")
    assert not (project / "runs").exists() and not (project / "mlruns").exists()
