"""Two gemctl commands on one project at once: the second waits for the first, saying so, and neither's record
is corrupted (dvc.lock, params.json, the job registry, the MLflow runs)."""

import json
import subprocess
import time

import yaml

from tests.pipeline.project_copy import GEMCTL, env, make_project


def _lock_holder(project):
    path = project / ".gemctl" / "pipeline.lock"
    try:
        return json.loads(path.read_text() or "{}").get("pid")
    except (OSError, ValueError):
        return None


def test_a_second_train_waits_for_the_first_and_both_records_hold(tmp_path):
    project = make_project(tmp_path / "p")
    first = subprocess.Popen([GEMCTL, "train", "stage1", "--recipe", "ci", "-o", "stages.stage1.lr=0.001", "-o",
                              "stages.stage1.steps=30"], cwd=project, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env())
    deadline = time.monotonic() + 120
    while _lock_holder(project) != first.pid:  # the first command holds the project's pipeline
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the first command never took the pipeline lock"
        time.sleep(0.05)
    second = subprocess.run([GEMCTL, "train", "stage1", "--recipe", "ci", "-o", "stages.stage1.lr=0.002", "-o",
                             "stages.stage1.steps=3"], cwd=project, capture_output=True, text=True, env=env())
    out1, err1 = first.communicate(timeout=600)
    assert first.returncode == 0, out1 + err1
    assert second.returncode == 0, second.stdout + second.stderr
    # the second said whom it waited for, in one line, and ran only after the first had finished
    waits = [line for line in second.stderr.splitlines() if line.startswith("waiting for")]
    assert len(waits) == 1 and f"(pid {first.pid}," in waits[0] and "stages.stage1.lr=0.001" in waits[0], waits

    # each run recorded its own settings: the second's render did not reach the first's stage
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`gemctl.stage` = 'stage1'",
                              order_by=["attributes.start_time ASC"], output_format="list")
    assert [(r.data.params["stages.stage1.lr"], r.data.params["stages.stage1.steps"], r.info.status)
            for r in runs] == [("0.001", "30", "FINISHED"), ("0.002", "3", "FINISHED")]
    assert runs[0].info.end_time <= runs[1].info.start_time
    # dvc.lock is whole and records the last one; params.json is the last one's
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    recorded = lock["stages"]["stage1@ci"]
    assert json.loads((project / "runs" / "ci" / "stage1" / "summary.json").read_text())["step"] == 3
    assert json.loads((project / "runs" / "ci" / "params.json").read_text())["stages"]["stage1"]["lr"] == 0.002
    assert recorded["params"]["runs/ci/params.json"]["stages.stage1"]["lr"] == 0.002
    # the job registry holds both jobs, each complete
    records = [json.loads(p.read_text()) for p in (project / ".gemctl" / "registry").glob("*.json")]
    stage1_jobs = [r for r in records if r.get("tags", {}).get("stage") == "stage1"]
    assert len(stage1_jobs) == 2 and all(r["state"] == "COMPLETED" for r in stage1_jobs), stage1_jobs
