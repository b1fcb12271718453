"""`gemctl doctor`: find where a project's records disagree after a fault, and fix what is safe to fix.

The records: dvc.lock (what DVC says each stage produced), the stage outputs themselves, the MLflow runs (the
lineage), the job registry (.gemctl/registry) and whatever a killed writer left behind. They agree when a stage is in
dvc.lock if and only if its output is there unchanged and its MLflow run FINISHED with a logged model; no run is
RUNNING without a job running it; no temporary folder outlives its writer. Safe fixes: restoring a recorded output
from DVC's cache, closing an orphaned RUNNING run as FAILED (tagged why), removing leftovers of dead writers, moving
unreadable registry records aside. Never safe, so only reported: a stage recorded without a finished run (run it
again with --force).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from .project import Project


@dataclass
class Finding:
    check: str  # outputs | lineage | runs | registry | leftovers
    where: str
    problem: str
    fix: Callable[[], str] | None = None  # does the fix and says what it did; None: only a person can fix it


def diagnose(project: Project) -> list[Finding]:
    """Every disagreement found, in the order of the checks."""
    recorded = _recorded(project)
    return [*_outputs(project, recorded), *_lineage(project, recorded), *_orphan_runs(project),
            *_registry(project), *_leftovers(project)]


def _recorded(project: Project) -> dict[str, dict]:
    lock = project.root / "dvc.lock"
    return ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {}) if lock.is_file() else {}


def _outputs(project: Project, recorded: dict) -> list[Finding]:
    """Recorded stages whose outputs were deleted or changed since DVC recorded them."""
    if not recorded:
        return []
    from dvc.repo import Repo

    found = []
    with Repo(str(project.root)) as repo:
        status = repo.status()
    for key, changes in status.items():
        name = key.rsplit(":", 1)[-1]
        if name not in recorded:
            continue  # never run: nothing to disagree with
        for change in changes:
            if isinstance(change, dict) and "changed outs" in change:
                for path, how in change["changed outs"].items():
                    found.append(Finding("outputs", path, f"{name} is recorded in dvc.lock but its output is {how}",
                                         _checkout(project, name, path)))
    return found


def _checkout(project: Project, stage: str, path: str) -> Callable[[], str]:
    def fix() -> str:
        from dvc.repo import Repo

        with Repo(str(project.root)) as repo:
            repo.checkout(targets=[stage], force=True)
        return f"restored {path} from DVC's cache (dvc checkout {stage})"
    return fix


def _lineage(project: Project, recorded: dict) -> list[Finding]:
    """Recorded training stages whose MLflow run is missing, unfinished or without its logged model."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from .tracking import setup

    found = []
    client = None
    for name in recorded:
        stage, _, recipe = name.partition("@")
        summary_file = project.stage_dir(recipe, stage) / "summary.json"
        if not summary_file.is_file():
            continue  # its output is missing: _outputs says so
        summary = json.loads(summary_file.read_text())
        run_id = summary.get("mlflow_run_id")
        if not run_id or summary.get("tracking_uri") not in (None, project.tracking_uri):
            continue  # recorded in another store: not this project's to check
        if client is None:
            setup(project)
            client = MlflowClient()
        try:
            run = client.get_run(run_id)
        except MlflowException:
            found.append(Finding("lineage", name, f"recorded in dvc.lock, but its MLflow run {run_id} does not "
                                 f"exist: run `gemctl train {stage} --recipe {recipe} --force` to record it again"))
            continue
        if run.info.lifecycle_stage != "active" or run.info.status != "FINISHED":
            found.append(Finding("lineage", name, f"recorded in dvc.lock, but its MLflow run {run_id} is "
                                 f"{run.info.lifecycle_stage if run.info.lifecycle_stage != 'active' else run.info.status}"
                                 f": run `gemctl train {stage} --recipe {recipe} --force`"))
        elif stage != "data" and summary.get("model_id"):
            try:
                client.get_logged_model(summary["model_id"])
            except MlflowException:
                found.append(Finding("lineage", name, f"its logged model {summary['model_id']} is missing from "
                                     f"the store: run `gemctl train {stage} --recipe {recipe} --force`"))
    return found


def _orphan_runs(project: Project) -> list[Finding]:
    """RUNNING runs that no job runs any more (its job was killed and nobody closed the run)."""
    import mlflow

    from .launch import registry
    from .tracking import setup

    setup(project)
    running = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                 filter_string="attributes.status = 'RUNNING'")
    if not running:
        return []
    live = {(r.tags.get("stage"), r.tags.get("point")) for r in registry.list_jobs(project.root) if not r.finished}
    live_stages = {s for s, _ in live}
    found = []
    for run in running:
        stage = run.data.tags.get("gemctl.stage")
        if stage is None or stage in live_stages:
            continue  # not gemctl's, or its stage has a job that may still be running it
        name = run.info.run_name or run.info.run_id
        found.append(Finding("runs", f"{name} ({run.info.run_id})", "RUNNING, but no job runs it",
                             _close_run(run.info.run_id)))
    return found


def _close_run(run_id: str) -> Callable[[], str]:
    def fix() -> str:
        from .tracking import _close_if_running

        _close_if_running(run_id, "closed by gemctl doctor: no job ran it any more")
        return f"closed MLflow run {run_id} as FAILED"
    return fix


def _registry(project: Project) -> list[Finding]:
    """Job records that cannot be read (status and cancel skip them silently)."""
    from .launch import registry

    found = []
    folder = project.root / ".gemctl" / "registry"
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            registry.JobRecord(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            found.append(Finding("registry", str(path.relative_to(project.root)), "unreadable job record",
                                 _move_aside(project, path)))
    return found


def _move_aside(project: Project, path: Path) -> Callable[[], str]:
    def fix() -> str:
        dest = path.parent / "unreadable" / path.name
        dest.parent.mkdir(exist_ok=True)
        os.replace(path, dest)
        return f"moved {path.relative_to(project.root)} to {dest.relative_to(project.root)}"
    return fix


def _leftovers(project: Project) -> list[Finding]:
    """Temporary files and folders whose writer is gone: half-written or half-deleted checkpoints, staging and
    previous copies of atomic folders, half-copied code snapshots, DVC execution notes."""
    from gem_stages.files import _alive

    from .launch import registry

    host = socket.gethostname()
    candidates: list[tuple[Path, str]] = []
    runs = project.runs_dir
    # a running job writes checkpoints and snapshots as .tmp too: only with no job running are they leftovers
    quiet = not any(not r.finished for r in registry.list_jobs(project.root))
    if runs.is_dir() and quiet:
        candidates += [(p, "a half-written checkpoint") for p in runs.glob("*/resume/*/ckpt-*.tmp")]
        candidates += [(p, "a half-deleted checkpoint") for p in runs.glob("*/resume/*/.trash-*")]
    if runs.is_dir():
        for p in [*runs.glob(".*"), *runs.glob("*/.*")]:
            # files.atomic_dir's siblings: .<name>.staging-<host>-<pid> and .<name>.previous-<host>-<pid>
            head, _, pid = p.name.rpartition("-")
            if (".staging-" in head or ".previous-" in head) and head.endswith(f"-{host}") and pid.isdigit() \
                    and not _alive(int(pid)):
                candidates.append((p, "a folder a killed writer was filling or replacing"))
    jobs = project.jobs_dir
    if jobs.is_dir() and quiet:
        candidates += [(p, "a half-copied code snapshot") for p in jobs.glob("**/code/.tmp-*")]
    for p in (project.root / ".gemctl").glob("executed-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            candidates.append((p, "a note of a gemctl command that ended without cleaning up"))
    return [Finding("leftovers", str(p.relative_to(project.root)), what, _remove(project, p))
            for p, what in candidates]


def _remove(project: Project, path: Path) -> Callable[[], str]:
    def fix() -> str:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        return f"removed {path.relative_to(project.root)}"
    return fix
