"""Ctrl-C during a local sweep (SIGINT to the process group of a real `gemctl sweep`): every running point stops at
a step boundary with its checkpoint, its MLflow run and the sweep's parent run end KILLED, the jobs end CANCELLED,
the terminal gets one line and gemctl exits 130."""

import json
import os
import re
import signal
import subprocess
import time

import pytest

from .project_copy import GEMCTL, env, gemctl, make_project

pytestmark = pytest.mark.slow

BOUND_S = 600  # only guards against a hang: each wait ends on a condition long before


def test_ctrl_c_stops_a_sweep_and_closes_its_runs_as_killed(tmp_path):
    import mlflow

    project = make_project(tmp_path / "p")
    log = project / "sweep.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [GEMCTL, "sweep", "stage1", "--recipe", "ci", "-p", "stages.stage1.lr=1e-4,2e-4", "--parallel", "2",
             "-o", "stages.stage1.steps=100000", "-o", "stages.stage1.checkpoint_every=0"],
            cwd=project, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env())
    try:
        deadline = time.monotonic() + BOUND_S
        # both points are training: each has printed a step line
        while len(set(re.findall(r"^(point \S+) .*\[stage1\] step ", log.read_text(), re.M))) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal
        code = proc.wait(timeout=BOUND_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = log.read_text()
    assert code == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    said = [line for line in out.splitlines() if re.match(r"sweep sw-\w+: cancelled", line)]
    assert len(said) == 1, out
    sweep_id = said[0].split()[1].rstrip(":")

    jobs = json.loads(gemctl(project, "status", "--json").stdout)
    assert sorted(j["state"] for j in jobs if j.get("sweep") == sweep_id) == ["CANCELLED", "CANCELLED"], jobs
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"tags.`gemctl.sweep` = '{sweep_id}'")
    parent = [r for r in runs if r.data.tags.get("gemctl.sweep_parent") == "true"]
    points = [r for r in runs if r.data.tags.get("gemctl.sweep_parent") != "true"]
    assert [r.info.status for r in parent] == ["KILLED"]
    assert sorted(r.info.status for r in points) == ["KILLED", "KILLED"]
    # each point kept the checkpoint of the step it stopped at
    resume = sorted((project / "runs" / "ci" / "sweeps").rglob("ckpt-*"))
    assert len([c for c in resume if not c.name.endswith(".tmp")]) == 2, resume
