"""Crash safety under SIGKILL: `gemctl train stage1` of a tiny recipe, its training process killed at seeded random
moments (while it starts, between steps, while a checkpoint is being written), then while its output is written and
once it is in place but not recorded, then resumed to the end.

After every kill: the newest complete checkpoint loads, the stage's output is absent or complete (never half
written under its final name), dvc.lock records nothing for the stage and its MLflow run is not left RUNNING. The
run resumed to the end has the same weights, tensor for tensor, as an uninterrupted run.
"""

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from gem_stages.trainer import checkpoint_step

from .project_copy import GEMCTL, env, gemctl, make_project

pytestmark = pytest.mark.slow

KILLS = 20
STEPS = 80
SEED = 1234
RECIPE = "crash"
TRAIN = ["train", "stage1", "--recipe", RECIPE, "-o", "stages.stage1.checkpoint_every=1",
         "-o", "stages.stage1.keep_checkpoints=2"]
POLL_S = 0.002  # how often the watcher looks for a checkpoint being written (they take tens of ms here)


def checkpoints(project: Path) -> list[Path]:
    return sorted(p for p in (project / "runs" / RECIPE / "resume").glob("stage1-*/ckpt-*") if p.is_dir())


def identity(p: Path) -> tuple | None:
    try:
        st = p.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def load_checkpoint(ckpt: Path) -> int:
    """Load every file of a trainer checkpoint; return the step it says it holds."""
    files = sorted(p for p in ckpt.rglob("*") if p.is_file())
    assert files, f"{ckpt} is empty"
    for f in files:
        if f.suffix == ".safetensors":
            load_file(f)
        elif f.suffix in (".bin", ".pt", ".pkl", ".pth"):
            torch.load(f, weights_only=False)
        elif f.suffix == ".json":
            json.loads(f.read_text())
    return checkpoint_step(ckpt)


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.rglob("*.safetensors")):
        tensors.update({f"{f.relative_to(model_dir)}:{k}": v for k, v in load_file(f).items()})
    assert tensors, f"no weights under {model_dir}"
    return tensors


def training_process(proc: subprocess.Popen) -> psutil.Process | None:
    """The job's task process (submitit's local executor runs it as `python -m submitit.core._submit`)."""
    try:
        for child in psutil.Process(proc.pid).children(recursive=True):
            if "submitit.core._submit" in " ".join(child.cmdline()):
                return child
    except psutil.NoSuchProcess:
        pass
    return None


def wait_for(condition, proc: subprocess.Popen, log: Path, what: str):
    """Poll `condition` until it returns something; bounded by the gemctl command: if that ends first, fail."""
    while True:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"gemctl ended (exit {proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(POLL_S)


class Watcher:
    """Counts the checkpoints a run starts writing (ckpt-*.tmp) and finishes (ckpt-*) after it was created: a
    folder that was there before counts again only when made anew (another inode or mtime)."""

    def __init__(self, project: Path):
        self.resume = project / "runs" / RECIPE / "resume"
        self.out = project / "runs" / RECIPE / "stage1"
        self.before = self._now()
        self.out_before = identity(self.out)
        self.staging_before = set(self.out.parent.glob(".stage1.staging-*"))
        self.started: dict[Path, tuple] = {}
        self.finished: dict[Path, tuple] = {}

    def _now(self) -> set:
        return {(p, identity(p)) for p in self.resume.glob("stage1-*/ckpt-*")}

    def poll(self) -> None:
        for p, ident in self._now() - self.before:
            if ident is not None:
                (self.started if p.name.endswith(".tmp") else self.finished).setdefault(p, ident)

    def writing(self, n: int) -> Path | None:
        """A checkpoint folder being written, from the n-th this run started on (a write seen too late to be
        caught counts as started; the next one is taken)."""
        self.poll()
        return next((p for p in sorted(self.started)[n - 1:] if identity(p) is not None), None)

    def done(self, n: int) -> bool:
        self.poll()
        return len(self.finished) >= n

    def writing_output(self) -> bool:
        """The stage's output is being written (a new staging sibling of runs/<recipe>/stage1)."""
        return bool(set(self.out.parent.glob(".stage1.staging-*")) - self.staging_before)

    def output_in_place(self) -> bool:
        """A new runs/<recipe>/stage1 is in place: the job now records its lineage, then DVC its lock entry."""
        now = identity(self.out)
        return now is not None and now[0] != (self.out_before or (None,))[0]


def mlflow_runs(project: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["gemctl"], output_format="list",
                              filter_string=f"tags.`gemctl.stage` = 'stage1' and tags.`gemctl.recipe` = '{RECIPE}'")


def kill_once(project: Path, rng: random.Random, mode: str, log: Path) -> bool:
    """Start `gemctl train`, SIGKILL its training process at a moment chosen by `mode`, wait for gemctl to end.
    Returns whether the kill landed while a checkpoint was being written."""
    watch = Watcher(project)
    with log.open("w") as out:
        proc = subprocess.Popen([GEMCTL, *TRAIN], cwd=project, stdout=out, stderr=subprocess.STDOUT,
                                env=env())
    try:
        task = wait_for(lambda: training_process(proc), proc, log, "the training process started")
        writing = None
        if mode == "starting":  # importing, building the model, opening the MLflow run, or the first steps
            at = time.monotonic() + rng.uniform(0.0, 4.0)
            wait_for(lambda: time.monotonic() >= at or watch.done(1), proc, log, "the kill moment")
        elif mode == "writing":  # while the n-th checkpoint of this run is being written
            n = rng.randint(1, 3)
            path = wait_for(lambda: watch.writing(n), proc, log, f"checkpoint write {n}")
            writing = (path, (identity(path) or (None,))[0])
        elif mode == "writing output":  # training is over; the output is being written beside its final name
            wait_for(watch.writing_output, proc, log, "the output being written")
        elif mode == "recording":  # the output is in place; its lineage and dvc.lock entry are not
            wait_for(watch.output_in_place, proc, log, "the output in place")
        else:  # "training": in the step after the n-th checkpoint of this run (a step takes tens of ms here)
            n = rng.randint(1, 3)
            wait_for(lambda: watch.done(n), proc, log, f"checkpoint {n}")
            at = time.monotonic() + rng.uniform(0.0, 0.05)
            wait_for(lambda: time.monotonic() >= at, proc, log, "the kill moment")
        task.send_signal(signal.SIGKILL)
        task.wait()
        # the write never finished: its folder is still there, not renamed to its final name
        during_write = writing is not None and writing[1] is not None and \
            (identity(writing[0]) or (None,))[0] == writing[1]
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc != 0, f"gemctl succeeded although its training process was killed:\n{log.read_text()[-3000:]}"
    return during_write


def assert_crash_safe(project: Path) -> int:
    """The state a kill must leave; returns the step of the newest complete checkpoint (0: none)."""
    complete = [p for p in checkpoints(project) if not p.name.endswith(".tmp")]
    step = load_checkpoint(complete[-1]) if complete else 0
    if complete:
        assert complete[-1].name == f"ckpt-{step:08d}"
    out = project / "runs" / RECIPE / "stage1"
    if out.exists():  # only ever complete under its final name
        assert json.loads((out / "summary.json").read_text())["status"] == "completed"
        weights(out / "model")
    lock = project / "dvc.lock"
    assert f"stage1@{RECIPE}" not in (yaml.safe_load(lock.read_text())["stages"] if lock.is_file() else {})
    statuses = {r.info.run_id: r.info.status for r in mlflow_runs(project)}
    assert "RUNNING" not in statuses.values(), statuses
    for f in (project / "runs" / RECIPE / "resume").glob("stage1-*/mlflow_run_id"):
        assert statuses[f.read_text().strip()] in ("FAILED", "KILLED")
    return step


def test_sigkill_at_random_moments_then_exact_resume(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("crash"))
    (project / "recipes" / f"{RECIPE}.yaml").write_text(f"extends: ci\nstages:\n  stage1: {{steps: {STEPS}}}\n")
    r = gemctl(project, "train", "data", "--recipe", RECIPE)
    assert r.returncode == 0, r.stdout + r.stderr
    rng = random.Random(SEED)
    logs = project.parent / "logs"
    logs.mkdir()
    during_write, step = 0, 0
    for i in range(KILLS):
        # every third kill lands in a checkpoint write; near the end only start-up kills, so the run never finishes
        mode = "writing" if i % 3 == 0 else rng.choice(["starting", "training"])
        if STEPS - step <= 10:
            mode = "starting"
        during_write += kill_once(project, rng, mode, logs / f"kill-{i:02d}.log")
        step = assert_crash_safe(project)
    # then where the stage ends: while its output is written, and once it is in place but not recorded yet
    for i, mode in enumerate(("writing output", "recording")):
        kill_once(project, rng, mode, logs / f"kill-end-{i}.log")
        step = assert_crash_safe(project)
    print(f"{KILLS + 2} kills, {during_write} while a checkpoint was being written, 2 while the stage's output was "
          f"written or recorded; resuming from step {step}/{STEPS}")
    assert during_write >= 3, f"only {during_write} kill(s) landed while a checkpoint was being written"
    assert step > 0, "no kill let the stage get past its first checkpoint"

    r = gemctl(project, *TRAIN)
    assert r.returncode == 0, r.stdout + r.stderr
    out = project / "runs" / RECIPE / "stage1"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == STEPS
    assert summary["resumed_from"] == step
    resumed = weights(out / "model")
    # the run that finished was continued through the kills after it began, and says it was interrupted; a run a
    # kill cut off before its id reached the resume state was closed FAILED by its launcher
    runs = {x.info.run_id: x for x in mlflow_runs(project)}
    assert runs[summary["mlflow_run_id"]].info.status == "FINISHED"
    assert runs[summary["mlflow_run_id"]].data.tags.get("gemctl.interrupted")
    assert all(x.info.status == "FAILED" for i, x in runs.items() if i != summary["mlflow_run_id"])

    r = gemctl(project, *TRAIN, "--force")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((out / "summary.json").read_text())["resumed_from"] == 0
    fresh = weights(out / "model")
    assert resumed.keys() == fresh.keys()
    differing = [k for k in fresh if not torch.equal(resumed[k], fresh[k])]
    assert not differing, f"{len(differing)} of {len(fresh)} tensors differ after resuming, e.g. {differing[:3]}"
