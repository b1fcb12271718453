"""Writer processes for the concurrency tests: each is one stage job of an array, logging through gemctl's own
StageRun (params of the resolved recipe, tags, metric batches), then everything is counted back."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STEPS = 20  # metric steps per run
KEYS = ("loss", "loss/lm", "loss/depth", "lr")  # metric keys per step
FLUSH_EVERY = 2  # steps per log_batch: many small batches, as many concurrent commits as possible
LAUNCH = "concurrency-test"
JOBS = 16  # writer processes, as many as the jobs of an array on one node


def value(job: int, key: int, step: int) -> float:
    """A value no other job, key or step logs: a lost, swapped or duplicated point shows."""
    return job * 1e6 + key * 1e4 + step + 0.5


def job(uri: str, job: int, work: Path) -> None:
    """One stage job: a StageRun with the recipe's params and tags, then STEPS steps of metrics in batches."""
    os.environ["GEMCTL_TRACKING_URI"] = uri
    os.environ["GEMCTL_LAUNCH"] = LAUNCH
    os.environ.setdefault("GEMCTL_GIT_COMMIT", "0" * 40)  # no git subprocess per job
    from gemctl.project import Project
    from gemctl.recipe import resolve
    from gemctl.tracking import StageRun

    recipe = resolve(ROOT / "recipes", "tiny")
    print("ready", flush=True)
    sys.stdin.readline()  # all jobs start logging together
    with StageRun(Project(work), recipe, "stage1", work_dir=work / f"job{job}", tags={"test.job": str(job)}) as run:
        for step in range(STEPS):
            run.log_metrics({k: value(job, i, step) for i, k in enumerate(KEYS)}, step)
            if step % FLUSH_EVERY == FLUSH_EVERY - 1:
                run.flush()
    from gemctl import tracking_store

    print(f"retried {tracking_store.retried}", flush=True)


def run_writers(uri: str, work: Path, jobs: int = JOBS) -> tuple[list[str], int]:
    """Start `jobs` writer processes, let them all start logging at once, wait for all. Returns the failures
    (exit code and stderr of each job that failed) and how many store calls were retried while locked."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    logs = [tempfile.TemporaryFile("w+") for _ in range(jobs)]  # a pipe could fill up while the others start
    procs = [subprocess.Popen([sys.executable, "-m", "tests.tracking_store.writers", uri, str(work), str(j)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
                              env=env) for j, log in enumerate(logs)]
    for p in procs:  # every job has imported what it needs
        p.stdout.readline()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    failures, retried = [], 0
    for j, (p, log) in enumerate(zip(procs, logs)):
        out, _ = p.communicate()
        retried += sum(int(x.split()[1]) for x in out.splitlines() if x.startswith("retried "))
        if p.returncode != 0:
            log.seek(0)
            failures.append(f"job {j} exited {p.returncode}: {log.read()[-3000:]}")
        log.close()
    return failures, retried


def count(uri: str) -> dict:
    """What the store holds of the writers' runs: per job, its run's status, params, tags and metric points."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("gemctl")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`gemctl.launch` = '{LAUNCH}'",
                              max_results=1000)
    out = {}
    for r in runs:
        job = int(r.data.tags["test.job"])
        points = {k: sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, k)) for k in KEYS}
        out.setdefault(job, []).append({"status": r.info.status, "params": r.data.params, "tags": r.data.tags,
                                        "points": points})
    return out


def expected_params() -> dict[str, str]:
    """What StageRun logs as params: the flattened resolved recipe."""
    from gemctl.recipe import resolve
    from gemctl.schema import flatten

    return {k: str(v)[:6000] for k, v in flatten(resolve(ROOT / "recipes", "tiny").to_dict()).items()}


def assert_nothing_lost(uri: str, jobs: int = JOBS) -> None:
    """Every job's run is there once, FINISHED, with all its params and tags, and exactly its metric points."""
    found = count(uri)
    assert sorted(found) == list(range(jobs)), f"runs of jobs {sorted(found)}"
    params = expected_params()
    for j, runs in sorted(found.items()):
        assert len(runs) == 1, f"job {j}: {len(runs)} runs"
        run = runs[0]
        assert run["status"] == "FINISHED", f"job {j}: {run['status']}"
        assert run["params"] == params, f"job {j}: {len(run['params'])} of {len(params)} params"
        assert run["tags"]["gemctl.stage"] == "stage1" and run["tags"]["test.job"] == str(j)
        for i, k in enumerate(KEYS):
            assert run["points"][k] == [(s, value(j, i, s)) for s in range(STEPS)], f"job {j}, {k}"


if __name__ == "__main__":
    job(sys.argv[1], int(sys.argv[3]), Path(sys.argv[2]))
