"""The pipeline on the project's real single-node SLURM: a stage through DVC, a sweep array, a failing job,
status, logs and cancel, all through the gemctl CLI."""

import json
from pathlib import Path

import pytest
import yaml

from gem_stages.trainer import checkpoint_step

from .project_copy import gemctl, make_project

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


@pytest.fixture(scope="module")
def project(slurm_cluster, tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("slurm"))


def jobs(project):
    r = gemctl(project, "status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_stage1_runs_on_slurm_through_dvc(project):
    r = gemctl(project, "train", "stage1", "--recipe", "ci", "--executor", "slurm")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[stage1] step 3/3" in r.stdout + r.stderr  # the job's progress streamed back
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert {"data@ci", "stage1@ci"} <= set(lock)
    slurm = [j for j in jobs(project) if j["kind"] == "slurm"]
    assert {(j["stage"], j["state"]) for j in slurm} == {("data", "COMPLETED"), ("stage1", "COMPLETED")}
    assert all(j["job_id"].isdigit() and j["node"] for j in slurm)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["gemctl"], filter_string="tags.`gemctl.stage` = 'stage1'",
                             output_format="list")[0]
    assert run.data.tags["gemctl.executor"] == "slurm" and run.info.status == "FINISHED"
    # logs by run name
    r = gemctl(project, "logs", "stage1@ci")
    assert r.returncode == 0 and "[stage1] step 3/3" in r.stdout
    # nothing changed: no new job
    before = len(jobs(project))
    r = gemctl(project, "train", "stage1", "--recipe", "ci", "--executor", "slurm")
    assert r.returncode == 0 and "up to date" in r.stdout
    assert len(jobs(project)) == before


def test_sweep_is_one_array_and_rerun_submits_nothing(project):
    args = ["sweep", "stage2", "--recipe", "ci", "-p", "stages.stage2.lr=1e-3,3e-3",
            "-p", "stages.stage2.loss.depth=0.5,1.0", "--executor", "slurm", "--parallel", "2"]
    r = gemctl(project, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 point(s), 0 already complete, 4 to run" in r.stdout
    points = [j for j in jobs(project) if j["sweep"]]
    assert len(points) == 4
    assert len({j["job_id"].split("_")[0] for j in points}) == 1  # one array
    assert all(j["state"] == "COMPLETED" for j in points)
    assert r.stdout.count("completed") == 4
    r = gemctl(project, *args)
    assert r.returncode == 0 and "4 already complete, 0 to run" in r.stdout
    assert len([j for j in jobs(project) if j["sweep"]]) == 4

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    sweep_id = points[0]["sweep"]
    runs = mlflow.search_runs(experiment_names=["gemctl"], filter_string=f"tags.`gemctl.sweep` = '{sweep_id}'",
                              output_format="list")
    parents = [x for x in runs if x.data.tags.get("gemctl.sweep_parent") == "true"]
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 4
    assert parents[0].info.status == "FINISHED"


def test_two_rank_stage_records_one_run_and_one_checkpoint(project):
    r = gemctl(project, "train", "stage2", "--recipe", "ci", "--executor", "slurm",
               "-o", "resources.tasks_per_node=2")
    assert r.returncode == 0, r.stdout + r.stderr
    stage2 = [j for j in jobs(project) if j["stage"] == "stage2" and not j["sweep"]]
    assert [j["state"] for j in stage2] == ["COMPLETED"]
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["gemctl"], output_format="list",
                              filter_string="tags.`gemctl.stage` = 'stage2' and tags.`gemctl.recipe` = 'ci'")
    runs = [x for x in runs if "gemctl.sweep" not in x.data.tags]
    assert len(runs) == 1 and runs[0].data.params["resources.tasks_per_node"] == "2"
    summary = json.loads((project / "runs" / "ci" / "stage2" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 3


def test_bad_sweeps_are_refused_before_submitting(project):
    before = len(jobs(project))
    for args, message in [
        (["-p", "stages.stage2.lrr=1,2"], "did you mean 'stages.stage2.lr'?"),
        (["-p", "stages.stage2.lr=abc"], "is not a number"),
        ([], "the sweep grid is empty"),
        (["-p", "stages.stage1.lr=1,2"], "changes upstream stage stage1"),
        (["-p", "stages.stage2.lr=1e-3", "-o", "resources.partition=gpu"], "unknown SLURM partition 'gpu'"),
        (["-p", "stages.stage2.lr=1e-3", "-o", "resources.cpus_per_task=512"], "cpus"),
    ]:
        r = gemctl(project, "sweep", "stage2", "--recipe", "ci", "--executor", "slurm", *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    assert len(jobs(project)) == before


def test_unsatisfiable_train_is_refused_before_anything_runs(project):
    before = len(jobs(project))
    for override, message in [("resources.partition=gpu", "unknown SLURM partition 'gpu'"),
                              ("resources.mem_gb=100000", "mem")]:
        r = gemctl(project, "train", "stage3", "--recipe", "ci", "--executor", "slurm", "-o", override)
        assert r.returncode == 2, r.stdout + r.stderr
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and message in lines[0], r.stderr
    assert len(jobs(project)) == before


def test_failing_job_shows_its_log_and_is_not_recorded(project):
    broken = project / "broken-checkpoint"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (project / "recipes" / "broken.yaml").write_text(yaml.safe_dump(
        {"extends": "ci", "model": {"backbone": {"pretrained": str(broken)}}}))
    r = gemctl(project, "train", "stage1", "--recipe", "broken", "--executor", "slurm")
    assert r.returncode != 0
    assert "ended FAILED" in r.stderr and "full log:" in r.stderr
    # the traceback shown is the job's: the job's log holds it, and what gemctl printed besides the job's log
    # lines (streamed as they came, then its tail) holds none
    job_log = Path(r.stderr.rpartition("full log:")[2].split()[0]).read_text()
    assert "Traceback" in job_log and "JSONDecodeError" in job_log
    tail = r.stderr.partition("last lines of its log:")[2].partition("full log:")[0].strip()
    assert tail in job_log
    # its frames run the job's code snapshot
    assert [x for x in tail.splitlines() if x.lstrip().startswith('File "') and "/.gemctl/jobs/" in x], tail
    job_lines = set(job_log.splitlines())
    ours = [line for line in (r.stdout + r.stderr).splitlines() if line not in job_lines]
    assert ours and not [line for line in ours if "Traceback" in line or line.lstrip().startswith('File "')], ours
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert "stage1@broken" not in lock and "data@broken" in lock
    assert not (project / "runs" / "broken" / "stage1").exists()


def test_cancel_a_running_job(project):
    import subprocess

    from .project_copy import GEMCTL, env

    # no periodic checkpoints: the one found after the cancel is the one the cancel made
    proc = subprocess.Popen([GEMCTL, "train", "stage3", "--recipe", "ci", "--executor", "slurm", "-o",
                             "stages.stage3.steps=100000", "-o", "stages.stage3.checkpoint_every=0"], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    try:
        # cancel once training runs (the launcher streams the job's progress line of step 1): a cancel while the
        # job still starts up gets SIGKILLed after SLURM's KillWait, before any step boundary, with nothing to keep
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[stage3] step "):
                break
        else:
            pytest.fail("stage3 never started training:\n" + "".join(lines))
        # (the registry may not have seen sacct say RUNNING yet: the job is unfinished either way)
        running = [j for j in jobs(project) if j["stage"] == "stage3" and j["state"] in ("PENDING", "RUNNING")]
        assert len(running) == 1, jobs(project)
        r = gemctl(project, "cancel", "stage3@ci")
        assert r.returncode == 0 and running[0]["job_id"] in r.stdout
        out = "".join(lines) + proc.stdout.read()
        assert proc.wait() != 0
        assert [j["state"] for j in jobs(project) if j["job_id"] == running[0]["job_id"]] == ["CANCELLED"]
        assert "was cancelled; checkpoint kept, not requeueing" in out
        assert "REQUEUED" not in out
        # the checkpoint the job says it kept is there: the stage resumes from it when it runs again
        kept = [c for c in (project / "runs" / "ci" / "resume").glob("stage3-*/ckpt-*") if not c.name.endswith(".tmp")]
        assert kept, "no checkpoint kept in runs/ci/resume"
        assert checkpoint_step(sorted(kept)[-1]) >= 1
        lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
        assert "stage3@ci" not in lock  # a cancelled stage is not recorded as done
    finally:
        if proc.poll() is None:
            proc.kill()
