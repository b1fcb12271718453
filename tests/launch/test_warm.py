"""The warm worker: a local job forked from it behaves as a cold one (env, cwd, argv, import path, snapshot code,
stdio, signals and requeue, exit status) and dies with its client; when it cannot, the job starts cold."""

import functools
import os
import signal
import socket
from pathlib import Path

import cloudpickle
import pytest

from gemctl.launch import Resources, launch, submit, warm
from tests.launch import jobfns, warmfns  # jobfns: pickled by value (tests/launch/conftest.py)
from tests.launch.conftest import wait_for

cloudpickle.register_pickle_by_value(warmfns)
RES = Resources(time_min=5, signal_delay_s=30)


@pytest.fixture
def server(monkeypatch):
    """Starts a warm worker when called, inside the test: pytest changes PYTEST_CURRENT_TEST between a fixture's
    setup and the test, and a server started in a different environment would (rightly) refuse the jobs."""
    monkeypatch.delenv(warm.SOCKET_ENV, raising=False)
    monkeypatch.delenv(warm.ENABLE_ENV, raising=False)
    started = []

    def start() -> warm.Server:
        s = warm.start()  # exports its socket in os.environ: removed again after the test, below
        started.append(s)
        assert s.wait_ready(bound_s=300)  # every PRELOAD module imported: a job then gets them all
        return s

    yield start
    os.environ.pop(warm.SOCKET_ENV, None)  # later tests' gemctl commands must not find a stopped server's socket
    for s in started:
        s.stop()
        assert not os.path.exists(s.path)  # it cleans up after itself


def client_pid(handle) -> int:
    """The task process submitit's local controller started: the warm client (or the cold job)."""
    ctl = handle._job._process.pid

    def children():
        path = Path(f"/proc/{ctl}/task/{ctl}/children")
        return path.is_file() and path.read_text().split()

    return int(wait_for(children, "the controller started its task", bound_s=120)[0])


def test_warm_job_sees_what_a_cold_job_sees(server, tmp_path, monkeypatch):
    server()
    warm_r = launch(functools.partial(warmfns.probe, "hello"), kind="local", resources=RES, job_dir=tmp_path / "j",
                    name="warm")
    monkeypatch.delenv(warm.SOCKET_ENV)
    cold_r = launch(functools.partial(warmfns.probe, "hello"), kind="local", resources=RES, job_dir=tmp_path / "j",
                    name="cold")
    assert warm_r.ok and cold_r.ok, (warm_r.error, cold_r.error)
    w, c = warm_r.value, cold_r.value
    assert w["forked"] and not c["forked"]  # the first was forked warm, the second started cold
    assert w["preloaded"] and not c["preloaded"]
    assert w["server_threads"] == 1  # the server forks single-threaded
    for key in ("note", "cwd", "argv", "path", "sigint", "stdin_tty"):
        assert w[key] == c[key], key
    assert w["gemctl"] == c["gemctl"] and w["gemctl"].startswith(str(tmp_path / "j" / "code"))  # the snapshot
    # the job id, the socket, and the controller's command line (which starts the client instead of python)
    per_job = {"SUBMITIT_LOCAL_JOB_ID", warm.SOCKET_ENV, "SUBMITIT_LOCAL_COMMAND"}
    assert {k: v for k, v in w["env"].items() if k not in per_job} == \
        {k: v for k, v in c["env"].items() if k not in per_job}
    for r in (warm_r, cold_r):  # stdout and stderr went to the job's own log (one file, in the order written)
        log = r.stdout.read_text()
        assert "probe says hello" in log and "probe warns hello" in log
    assert "warm worker not used" not in warm_r.stderr.read_text()


@pytest.mark.parametrize("sig", [signal.SIGUSR2, signal.SIGTERM], ids=["SIGUSR2", "SIGTERM"])
def test_preemption_signal_reaches_the_job_and_it_requeues_warm(server, tmp_path, sig):
    server()
    handle = submit(functools.partial(warmfns.stop_once, str(tmp_path)), kind="local", resources=RES,
                    job_dir=tmp_path / "j", name="stop")
    wait_for(lambda: (tmp_path / "ready-0").exists(), "the job is running", bound_s=120)
    os.kill(client_pid(handle), sig)  # where SLURM or submitit's controller sends it: the task process
    r = handle.wait()
    assert r.ok, r.error
    assert r.value == {"status": "completed", "restarts": 1, "forked": True}  # exit code 144 made it requeue
    assert f"got {sig.name}" in r.stdout.read_text()  # the job's log


def test_job_dies_when_its_client_is_killed(server, tmp_path):
    server()
    handle = submit(functools.partial(warmfns.wait_forever, str(tmp_path)), kind="local", resources=RES,
                    job_dir=tmp_path / "j", name="orphan")
    pid_file = tmp_path / "pid"
    job = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), "the job started", bound_s=120))
    client = client_pid(handle)
    assert client != job  # a warm job: the client stands in for it
    os.kill(client, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{job}").exists(), "the job exited after its client was killed", bound_s=120)
    r = handle.wait()
    assert r.state == "FAILED" and r.value is None  # as a cold job killed there: no result


@pytest.mark.parametrize("case", ["environment", "dead server"])
def test_jobs_start_cold_when_the_warm_path_cannot_match(server, tmp_path, monkeypatch, case):
    server()
    if case == "environment":  # libraries may read any variable at import: a different one rules the server out
        monkeypatch.setenv("WARM_TEST_VARIABLE", "1")
        why = "the job's environment differs in WARM_TEST_VARIABLE"
    else:  # a server killed before it could remove its socket
        stale = tmp_path / "stale.sock"
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(stale))
        monkeypatch.setenv(warm.SOCKET_ENV, str(stale))
        why = "cannot reach it (Connection refused)"
    r = launch(functools.partial(warmfns.probe, "cold"), kind="local", resources=RES, job_dir=tmp_path / "j",
               name="cold")
    assert r.ok, r.error
    assert not r.value["forked"] and not r.value["preloaded"]
    assert f"gemctl: warm worker not used: {why}; starting cold" in r.stderr.read_text()


def test_variables_set_per_job_keep_the_warm_path(server, tmp_path, monkeypatch):
    server()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")  # exported by the sweep's parent run
    monkeypatch.setenv("GEMCTL_EXECUTOR", "local")
    r = launch(functools.partial(warmfns.probe, "warm"), kind="local", resources=RES, job_dir=tmp_path / "j",
               name="warm")
    assert r.ok, r.error
    assert r.value["forked"] and r.value["env"]["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path}/m.db"


def test_disabled_means_no_server_and_submitit_default(monkeypatch):
    monkeypatch.setenv(warm.ENABLE_ENV, "0")
    monkeypatch.delenv(warm.SOCKET_ENV, raising=False)
    assert warm.start() is None and warm.python_command(Path("code")) is None
    assert warm.SOCKET_ENV not in os.environ


def test_two_rank_local_jobs_start_cold_beside_a_warm_worker(server, tmp_path):
    """Multi-task local jobs are not forked (see warm.python_command): with a worker running they start cold and
    train as without one."""
    two_ranks = Resources(tasks_per_node=2, cpus_per_task=1, time_min=5, signal_delay_s=30)
    job = functools.partial(jobfns.train, str(tmp_path / "alone"), steps=10)
    alone = launch(job, kind="local", resources=two_ranks, job_dir=tmp_path / "alone-jobs", name="ddp-alone")
    server()
    assert warm.python_command(Path("code")) is not None and warm.python_command(Path("code"), tasks=2) is None
    job = functools.partial(jobfns.train, str(tmp_path / "beside"), steps=10)
    beside = launch(job, kind="local", resources=two_ranks, job_dir=tmp_path / "beside-jobs", name="ddp-beside")
    assert alone.ok and beside.ok, (alone.error, beside.error)
    assert [v["rank"] for v in beside.values] == [0, 1] and beside.value["world"] == 2
    assert beside.values[0]["weights"] == beside.values[1]["weights"] == alone.value["weights"]


def test_local_time_limit_requeues_and_resumes_exactly_through_the_warm_worker(server, tmp_path):
    """submitit's controller sends USR2 itself (time limit - signal delay = 30 s into the run) to the client, and
    restarts the task on exit 144; the first run waits at step 10 for the signal."""
    server()
    steps = 30
    (tmp_path / "job").mkdir()
    r = launch(functools.partial(jobfns.train, str(tmp_path / "job"), steps=steps, pause_at=10), kind="local",
               resources=Resources(time_min=1, signal_delay_s=30, max_requeues=2), job_dir=tmp_path / "jobs",
               name="timelimit")
    assert r.ok, r.error
    assert r.requeues >= 1 and r.value["resumed_at"][0] == 10 and "got SIGUSR2" in r.stdout.read_text()
    assert "warm worker not used" not in r.stderr.read_text()
    (tmp_path / "ref").mkdir()
    ref = jobfns.train(str(tmp_path / "ref"), steps=steps)  # uninterrupted, in this process
    assert r.value["weights"] == ref["weights"] and r.value["losses"] == ref["losses"]
