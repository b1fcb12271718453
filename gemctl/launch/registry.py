"""gemctl's own record of the jobs it launched, one JSON file per job under <project>/.gemctl/registry/.

The launcher writes a record at submit time and on each state change; `list_jobs` refreshes the states of
unfinished SLURM jobs with one sacct call, so `gemctl status` also sees jobs whose launcher is gone.
Tags carry what the job is for: stage, point (recipe/sweep point), sweep (sweep id), run (lineage run id).
"""

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from gem_stages.errors import InputError
from gem_stages.files import atomic_write_text

from . import cluster


@dataclass
class JobRecord:
    job_id: str  # SLURM id ("123", "123_4" in an array), "local-<pid>" or "debug-<n>"
    kind: str  # slurm | local | debug
    name: str  # job name (the stage command's name)
    state: str  # PENDING, RUNNING, REQUEUED, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...
    submitted: float  # epoch seconds
    stdout: str  # rank 0's logs
    stderr: str
    job_dir: str
    tags: dict[str, str] = field(default_factory=dict)
    node: str = ""
    start: float | None = None
    end: float | None = None
    exit_code: int | None = None
    requeues: int = 0

    @property
    def stage(self) -> str:
        return self.tags.get("stage", self.name)

    @property
    def point(self) -> str:
        return self.tags.get("point", "")

    @property
    def sweep(self) -> str:
        return self.tags.get("sweep", "")

    @property
    def run(self) -> str:
        return self.tags.get("run", "")

    @property
    def finished(self) -> bool:
        return self.state in cluster.TERMINAL or self.state == "LOST"

    @property
    def elapsed_s(self) -> float:
        if self.start is None:
            return 0.0
        return max(0.0, (self.end if self.end is not None else time.time()) - self.start)

    def to_json(self) -> dict:
        return {**asdict(self), "stage": self.stage, "point": self.point, "sweep": self.sweep, "run": self.run,
                "elapsed_s": round(self.elapsed_s, 1)}


def _dir(root: Path) -> Path:
    return Path(root) / ".gemctl" / "registry"


def save(root: Path, rec: JobRecord) -> None:
    # atomic, with a unique temp file: the launcher, `status` and `cancel` may write the same record at once
    atomic_write_text(_dir(root) / f"{rec.job_id}.json", json.dumps(asdict(rec), indent=1))


def _load(root: Path) -> list[JobRecord]:
    d = _dir(root)
    out = []
    for f in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            out.append(JobRecord(**json.loads(f.read_text())))
        except (ValueError, TypeError):
            continue  # a record from another version: skip it rather than break `status`
    return out


def _epoch(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp()
    except (ValueError, TypeError):
        return None  # "Unknown", "None"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and ") Z " in stat.read_text())


def _refresh(root: Path, recs: list[JobRecord]) -> None:
    # also finished jobs whose accounting is incomplete: a launcher sees a fast job's result before sacct
    # knows where and when it ran, and squeue may report the node before sacct has the start and exit code
    slurm = [r for r in recs if r.kind == "slurm" and (not r.finished or r.end is None or not r.node
                                                       or r.start is None or r.exit_code is None)]
    info = cluster.query(r.job_id for r in slurm) if slurm else {}
    for r in slurm:
        row = info.get(r.job_id)
        if not row or (r.finished and row["State"] not in cluster.TERMINAL):
            continue  # sacct has not caught up yet
        exit_code = int(row["ExitCode"].split(":")[0]) if row.get("ExitCode") else r.exit_code
        new = (row["State"], row.get("NodeList") or r.node, _epoch(row.get("Start", "")), _epoch(row.get("End", "")),
               exit_code)
        if new != (r.state, r.node, r.start, r.end, r.exit_code):
            r.state, r.node, r.start, r.end, r.exit_code = new
            save(root, r)
    for r in recs:
        # a local job starts at once and runs while its controller's pid lives (also when its launcher is gone,
        # or is a `submit` that nobody waits on)
        if r.kind == "local" and not r.finished:
            if not _pid_alive(int(r.job_id.split("-")[1])):
                r.state, r.end = "LOST", r.end or time.time()
                save(root, r)
            elif r.state == "PENDING":
                r.state, r.start = "RUNNING", r.start or time.time()
                save(root, r)


def list_jobs(root: Path) -> list[JobRecord]:
    """All recorded jobs, oldest first, with fresh states (one sacct call for all unfinished SLURM jobs)."""
    recs = sorted(_load(root), key=lambda r: r.submitted)
    _refresh(root, recs)
    return recs


def find(root: Path, key: str) -> list[JobRecord]:
    """Jobs matching a job id, an array id (all its elements), a run id or a sweep id."""
    recs = sorted(_load(root), key=lambda r: r.submitted)
    hits = [r for r in recs if key in (r.job_id, r.job_id.split("_")[0], r.run, r.sweep)]
    if not hits:
        raise InputError(f"no gemctl job, run or sweep '{key}' under {root} (see `gemctl status`)")
    return hits


def job_log(root: Path, key: str, follow: bool = False) -> Iterator[str]:
    """Lines of the latest matching job's logs (rank 0's stdout, then stderr). With follow, lines from both
    as they are written, until the job has finished."""
    rec = find(root, key)[-1]
    paths = [Path(rec.stdout), Path(rec.stderr)]
    if not follow:
        for p in paths:
            if p.exists():
                yield from p.read_text(errors="replace").splitlines()
        return
    offsets, partial = [0, 0], ["", ""]
    next_check = 0.0
    while True:
        if time.time() >= next_check:  # state at most every 2 s (the launcher's record, then sacct); files 4x/s
            f = _dir(root) / f"{rec.job_id}.json"
            rec = JobRecord(**json.loads(f.read_text())) if f.exists() else rec
            _refresh(root, [rec])
            done = rec.finished
            next_check = time.time() + 2
        for i, p in enumerate(paths):
            if not p.exists():
                continue
            with p.open("rb") as f:
                f.seek(offsets[i])
                chunk = f.read()
            offsets[i] += len(chunk)
            *lines, partial[i] = (partial[i] + chunk.decode(errors="replace")).split("\n")
            yield from lines
        if done:
            yield from (p for p in partial if p)
            return
        time.sleep(0.25)


def cancel(root: Path, key: str) -> list[str]:
    """Cancel the unfinished jobs matching a job id, array id, run id or sweep id; returns their ids."""
    recs = [r for r in find(root, key) if not r.finished and r.kind != "debug"]  # debug runs in its launcher
    _refresh(root, recs)
    recs = [r for r in recs if not r.finished]
    from .preemption import cancel_marker

    for r in recs:  # before the signal: the job must see it when its SIGTERM handler runs
        marker = cancel_marker(Path(r.job_dir), r.job_id)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    slurm_ids = [r.job_id for r in recs if r.kind == "slurm"]
    if slurm_ids:
        subprocess.run(["scancel", *slurm_ids], check=True, capture_output=True, timeout=60)
    _cancel_local([int(r.job_id.split("-")[1]) for r in recs if r.kind == "local"])
    for r in recs:
        r.state, r.end = "CANCELLED", r.end or time.time()
        save(root, r)
    return [r.job_id for r in recs]


LOCAL_KILL_WAIT_S = 30  # like SLURM's default KillWait: time between SIGTERM and the hard stop


def _cancel_local(pids: list[int]) -> None:
    """Do what scancel does, for local jobs: SIGTERM (submitit's local controller forwards it to its tasks, which
    checkpoint at the next step boundary and leave; the cancel marker tells them not to requeue), then, for a job
    still running after LOCAL_KILL_WAIT_S, SIGINT, on which the controller stops its tasks (SIGINT, SIGKILL)."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + LOCAL_KILL_WAIT_S
    while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _pid_alive(pid):
            _signal(pid, signal.SIGINT)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
