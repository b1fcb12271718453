"""launch(): the same function on debug, local and slurm; failures; sbatch scripts; refusals before submitting."""

import functools
import os
import shlex
import signal
import subprocess
import threading
import uuid

import pytest

from gem_stages.errors import InputError
from gemctl.launch import Executor, Resources, cluster, dry_run, kind_from_env, launch, submit
from tests.launch import jobfns
from tests.launch.conftest import TEST_PREFIX, log_has, needs_slurm, wait_for

SMALL = Resources(time_min=5, signal_delay_s=30)


def test_trivial_function_same_result_everywhere(kind, tmp_path):
    updates = []
    r = launch(functools.partial(jobfns.add, 2, 3), kind=kind, resources=SMALL, job_dir=tmp_path / "jobs",
               name=TEST_PREFIX + "add", on_update=updates.append)
    assert r.ok and r.state == "COMPLETED" and r.exit_code == 0, r.error
    assert r.value["sum"] == 5 and r.values == [r.value]
    states = [u.state for u in updates if u.state]
    assert states[0] == "PENDING" and states[-1] == "COMPLETED"
    assert all(u.job_id == r.job_id for u in updates)
    if kind != "debug":  # a real job: its log lines were streamed
        assert any(u.line and "gemctl: rank 0/1" in u.line for u in updates)


def test_failing_job_reports_the_jobs_own_traceback(kind, tmp_path, monkeypatch, capfd):
    monkeypatch.setattr("sys.stdin.isatty", lambda: True, raising=False)  # debug must not open pdb even so
    marker = f"boom-{uuid.uuid4().hex}"  # raised inside the job function: nothing else can produce it
    r = launch(functools.partial(jobfns.fail, marker), kind=kind, resources=SMALL, job_dir=tmp_path / "jobs",
               name=TEST_PREFIX + "fail")
    assert not r.ok and r.state == "FAILED" and r.exit_code == 1 and r.value is None
    # the error is the job's traceback: it ends in the job function's own frame and exception
    lines = r.error.strip().splitlines()
    assert lines[-1] == f"ValueError: {marker}"
    frames = [i for i, line in enumerate(lines) if line.strip().startswith('File "')]
    assert lines[frames[-1]].strip().endswith(", in fail"), lines[frames[-1]]
    # ... and no frame of the launcher's side: gemctl reported the failure, it did not raise one of its own
    assert "executor.py" not in r.error and "wait_all" not in r.error
    assert "Traceback" not in capfd.readouterr().err.replace(r.error, "")
    if kind != "debug":
        assert f"ValueError: {marker}" in r.log_tail()


def test_local_job_killed_by_sigkill_fails_with_a_clear_reason(tmp_path):
    """LocalJob.state (submitit's public view of the controller) tells a job that died without a result."""
    h = submit(functools.partial(jobfns.block, str(tmp_path / "never")), kind="local", resources=SMALL,
               job_dir=tmp_path / "jobs", name=TEST_PREFIX + "killed")
    wait_for(lambda: log_has(h.stdout, "blocked"), "the job to start")
    pid = wait_for(lambda: _child_running(int(h.job_id.split("-")[1]), "submitit.core._submit"), "the job's process")
    os.kill(pid, signal.SIGKILL)
    r = h.wait()  # returns: the controller sees its task gone and exits; no result file will ever come
    assert r.state == "FAILED" and r.value is None
    assert "ended without a result (killed" in r.error and str(h.stdout) in r.error


def test_local_job_whose_controller_is_killed_fails_with_a_clear_reason(tmp_path):
    h = submit(functools.partial(jobfns.block, str(tmp_path / "never")), kind="local", resources=SMALL,
               job_dir=tmp_path / "jobs", name=TEST_PREFIX + "killed")
    wait_for(lambda: log_has(h.stdout, "blocked"), "the job to start")
    task = _child_running(int(h.job_id.split("-")[1]), "submitit.core._submit")
    os.kill(int(h.job_id.split("-")[1]), signal.SIGKILL)
    try:
        r = h.wait()
    finally:
        if task:
            os.kill(task, signal.SIGKILL)  # an orphan now: nobody else stops it
    assert r.state == "FAILED" and "its controller process was killed" in r.error


def test_ctrl_c_reaches_the_launcher_only_and_stops_the_local_job_as_a_cancel(tmp_path):
    """The local controller leads a session of its own with its task: a terminal's Ctrl-C (SIGINT to the
    launcher's process group) reaches the launcher alone, which asks the job to stop at its next step boundary
    (here: to return "preempted", as training does) and waits for it: CANCELLED, not requeued."""
    h = submit(functools.partial(jobfns.block, str(tmp_path / "never")), kind="local", resources=SMALL,
               job_dir=tmp_path / "jobs", name=TEST_PREFIX + "ctrl-c", project=tmp_path)
    wait_for(lambda: log_has(h.stdout, "blocked"), "the job to start")
    controller = int(h.job_id.split("-")[1])
    task = _child_running(controller, "submitit.core._submit")
    assert os.getsid(controller) == controller and os.getpgid(task) == controller
    assert os.getpgid(controller) != os.getpgid(0)  # not in our process group: a Ctrl-C here does not reach it
    # Ctrl-C while waiting (a signal to this process from another thread lands in the main thread's wait)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        h.wait()
    assert h.result.state == "CANCELLED" and "was cancelled" in h.result.error and h.requeues == 0
    assert log_has(h.stdout, "gemctl: got SIGTERM, stopping at the next step boundary")


def _child_running(ppid: int, needle: str) -> int | None:
    """The pid of a child of ppid whose command line contains needle (the local controller's task)."""
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(ppid)], capture_output=True, text=True).stdout
    return next((int(line.split()[0]) for line in out.splitlines() if needle in line), None)


def test_dry_run_shows_the_sbatch_script(tmp_path):  # needs no SLURM: nothing is submitted
    res = Resources(nodes=1, tasks_per_node=2, cpus_per_task=1, mem_gb=2, time_min=4, partition="short",
                    signal_delay_s=30, array_parallelism=3, extra_sbatch={"exclusive": "", "comment": "x"})
    text = dry_run(resources=res, job_dir=tmp_path, name="stage3", array_size=10)
    for line in ["#SBATCH --partition=short", "#SBATCH --ntasks-per-node=2", "#SBATCH --time=4",
                 "#SBATCH --signal=USR2@30", "#SBATCH --array=0-9%3", "#SBATCH --mem=2048M", "#SBATCH --exclusive",
                 "#SBATCH --comment=x", "#SBATCH --job-name=stage3", "export PYTHONSAFEPATH=1"]:
        assert line in text, line
    assert f"export PYTHONPATH={tmp_path}/code/" in text
    assert not (tmp_path / "code").exists()  # nothing copied, nothing submitted


@needs_slurm
def test_sbatch_itself_refuses_an_unknown_partition():
    r = subprocess.run(["sbatch", "-p", "no-such-partition", "--wrap", "true"], capture_output=True, text=True, check=False)
    assert r.returncode != 0 and "invalid partition" in r.stderr.lower()


@needs_slurm
@pytest.mark.parametrize("res, message", [
    ({"partition": "no-such-partition"}, "unknown SLURM partition 'no-such-partition' (available: debug, short)"),
    ({"cpus_per_task": 64}, "CPUs per node"),
    ({"tasks_per_node": 3, "cpus_per_task": 1}, "3 task(s) x cpus_per_task=1"),
    ({"nodes": 2}, "has 1 node(s)"),
    ({"gpus_per_node": 1}, "GPU(s)"),
    ({"mem_gb": 100000}, "mem_gb"),
    ({"partition": "short", "time_min": 10}, "exceeds the 5-minute limit of partition 'short'"),
])
def test_unsatisfiable_resources_are_refused_before_submitting(res, message, tmp_path):
    before = subprocess.run(["squeue", "-h"], capture_output=True, text=True, check=False).stdout
    with pytest.raises(InputError) as e:
        launch(functools.partial(jobfns.add, 1, 1), kind="slurm", resources=Resources(**{"signal_delay_s": 30, **res}),
               job_dir=tmp_path / "jobs", name=TEST_PREFIX + "refused")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert subprocess.run(["squeue", "-h"], capture_output=True, text=True, check=False).stdout == before
    assert not any((tmp_path / "jobs").glob("*_submitted.pkl"))


def test_bad_resource_values_are_refused():
    with pytest.raises(InputError, match="cpus_per_task=0 is out of range"):
        Resources(cpus_per_task=0)
    with pytest.raises(InputError, match="signal_delay_s=90 must be shorter than time_min=1"):
        Resources(time_min=1, signal_delay_s=90)


def test_slurm_not_reachable_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster.shutil, "which", lambda _name: None)
    with pytest.raises(InputError, match="SLURM is not available here"):
        launch(functools.partial(jobfns.add, 1, 1), kind="slurm", resources=SMALL, job_dir=tmp_path,
               name=TEST_PREFIX + "nope")


def test_slurm_controller_down_is_a_clear_error(tmp_path, monkeypatch):
    conf = tmp_path / "slurm.conf"  # a cluster whose controller listens nowhere
    conf.write_text("ClusterName=x\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=1\nMessageTimeout=2\n"
                    "NodeName=n CPUs=1\nPartitionName=p Nodes=n\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    with pytest.raises(InputError, match="SLURM controller is not reachable"):
        cluster.require_slurm()


@needs_slurm
def test_sbatch_refusal_is_one_line_input_error(tmp_path):
    res = Resources(time_min=5, signal_delay_s=30, extra_sbatch={"nodelist": "no-such-node"})
    with pytest.raises(InputError, match=r"^sbatch refused the job: .*[Ii]nvalid node name") as e:
        launch(functools.partial(jobfns.add, 1, 1), kind="slurm", resources=res, job_dir=tmp_path,
               name=TEST_PREFIX + "refused")
    assert "\n" not in str(e.value)


def test_executor_kind_from_env(monkeypatch):
    monkeypatch.delenv("GEMCTL_EXECUTOR", raising=False)
    assert kind_from_env() == "local" and kind_from_env("slurm") == "slurm"
    monkeypatch.setenv("GEMCTL_EXECUTOR", "slurm")
    assert kind_from_env() == "slurm" and kind_from_env() is Executor.SLURM
    monkeypatch.setenv("GEMCTL_EXECUTOR", "kubernetes")
    with pytest.raises(InputError, match="GEMCTL_EXECUTOR='kubernetes' is not an executor"):
        kind_from_env()


HOSTILE = "we ird 'q' \"dq\" ;$(touch {mark}) `touch {mark}` & | > <"


@needs_slurm
def test_names_paths_and_sbatch_values_with_shell_syntax_run_nothing(tmp_path):
    """Job name, job folder and sbatch values full of shell syntax reach SLURM as plain text: the job runs as
    asked and none of the embedded commands does."""
    mark = tmp_path / "ran"
    hostile = HOSTILE.format(mark=mark)
    job_dir = tmp_path / f"jobs {hostile}".replace("/", "_").replace(">", "_").replace("<", "_")
    res = Resources(time_min=5, signal_delay_s=30, extra_sbatch={"comment": hostile})
    r = launch(functools.partial(jobfns.add, 2, 3), kind="slurm", resources=res, job_dir=job_dir,
               name=TEST_PREFIX + hostile)
    assert r.ok and r.value["sum"] == 5, r.error
    script = next(job_dir.glob("*_submission.sh")).read_text()
    assert "$(touch" in script  # the text is there, as quoted data
    assert not mark.exists() and not list(tmp_path.rglob("ran"))
    # the name went to sbatch as one quoted value: the script's own line holds it whole
    assert f"#SBATCH --job-name={shlex.quote(TEST_PREFIX + hostile)}" in script


@pytest.mark.parametrize("settings, message", [
    ({"partition": "debug\ntouch /tmp/x #"}, "partition=.* holds a line break"),
    ({"extra_sbatch": {"comment": "a\rb"}}, "extra_sbatch comment=.* holds a line break"),
    ({"extra_sbatch": {"x\ntouch /tmp/x\n#": "1"}}, "is not an sbatch option name"),
    ({"extra_sbatch": {"mail type": "END"}}, "is not an sbatch option name"),
])
def test_a_resource_value_that_would_break_the_job_script_is_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        Resources(**settings)


def test_a_job_name_with_a_line_break_is_refused_before_anything_is_submitted(tmp_path):
    with pytest.raises(InputError, match="job name .* holds a line break"):
        submit(functools.partial(jobfns.add, 1, 1), kind="local", resources=SMALL, job_dir=tmp_path / "jobs",
               name=TEST_PREFIX + "a\nb")
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())
