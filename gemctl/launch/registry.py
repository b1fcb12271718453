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
        if row and row["State"] == cluster.GONE:
            # out of the queue, unknown to accounting: its launcher (if any) says how it ended; a job nobody
            # waits on must not read RUNNING for ever (`logs --follow` would never end)
            if not r.finished and time.time() - r.submitted > cluster.GONE_SETTLE_S:
                r.state, r.end = "LOST", r.end or time.time()
                save(root, r)
            continue
        if not row or (r.finished and row["State"] not in cluster.TERMINAL):
            continue  # sacct has not caught up yet
        exit_code = int(row["ExitCode"].split(":")[0]) if row.get("ExitCode") else r.exit_code
        # `gemctl cancel` recorded CANCELLED: SLURM may say FAILED for a job that was still starting and died of
        # the SIGTERM meant to make it checkpoint
        state = r.state if r.state == "CANCELLED" and row["State"] in cluster.TERMINAL else row["State"]
        # squeue alone (accounting behind or down) knows no start: keep the one the launcher saw, else count from
        # now (as for a local job), not 0 s elapsed for a job that runs
        start = _epoch(row.get("Start", "")) or r.start or (time.time() if state == "RUNNING" else None)
        new = (state, row.get("NodeList") or r.node, start, _epoch(row.get("End", "")) or r.end, exit_code)
        if new != (r.state, r.node, r.start, r.end, r.exit_code):
            r.state, r.node, r.start, r.end, r.exit_code = new
            save(root, r)
    for r in recs:
        # a local job starts at once and runs while its controller's pid lives (also when its launcher is gone,
        # or is a `submit` that nobody waits on)
        if r.kind == "local" and not r.finished:
            if not _pid_alive(_pid(r)):
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


def jobs_since(root: Path, since: float) -> list[JobRecord]:
    """The unfinished jobs (not debug: those run in their launcher) submitted since `since` (epoch seconds)."""
    return [r for r in _load(root) if r.submitted >= since and not r.finished and r.kind != "debug"]


def find(root: Path, key: str) -> list[JobRecord]:
    """Jobs matching a job id, an array id (all its elements), a run id or a sweep id."""
    recs = sorted(_load(root), key=lambda r: r.submitted)
    hits = [r for r in recs if key in (r.job_id, r.job_id.split("_")[0], r.run, r.sweep)]
    if not hits:
        raise InputError(f"no gemctl job, run or sweep '{key}' under {root} (see `gemctl status`)")
    return hits


def job_log(root: Path, key: str, follow: bool = False, tail: int = 20) -> Iterator[str]:
    """Lines of the latest matching job's log (rank 0's stdout, where the job writes its stderr too, then what
    reached stderr before that). A sweep or array id matches several jobs: the last `tail` lines of each point's
    latest job, each under a line naming the point. With follow, one job's lines as they are written, until it
    has finished."""
    hits = find(root, key)
    points = _points(hits, key)
    if len(points) > 1:
        if follow:
            raise InputError(f"'{key}' names {len(points)} jobs: follow one of them, e.g. `gemctl logs "
                             f"{points[-1].job_id} -f` (their ids are in `gemctl status`)")
        for rec in points:
            yield f"── {rec.point or rec.name} (job {rec.job_id}, {rec.state}) ──"
            yield from _lines(rec)[-tail:]
        return
    rec = hits[-1]
    paths = [Path(rec.stdout), Path(rec.stderr)]
    if not follow:
        yield from _lines(rec)
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


def _lines(rec: JobRecord) -> list[str]:
    return [line for p in (Path(rec.stdout), Path(rec.stderr)) if p.exists()
            for line in p.read_text(errors="replace").splitlines()]


def _points(hits: list[JobRecord], key: str) -> list[JobRecord]:
    """The jobs a sweep or array id names, the latest per point (a re-run sweep re-submits failed points)."""
    group = [r for r in hits if key in (r.sweep, r.job_id.split("_")[0]) and r.job_id != key]
    latest = {(r.point or r.job_id): r for r in group}  # hits are oldest first
    return list(latest.values())


def cancel(root: Path, key: str) -> list[str]:
    """Cancel the unfinished jobs matching a job id, array id, run id or sweep id; returns their ids.

    A running job gets SIGTERM, marked as a cancel (preemption.cancel_marker): it checkpoints at its next step
    boundary and leaves without being requeued. A job still running KILL_WAIT_S later (it never reached a step
    boundary) is stopped hard, like one not started yet at once. SLURM's own scancel gives only its KillWait
    (seconds) between SIGTERM and SIGKILL, less than a stage may need to start or to finish a step."""
    recs = [r for r in find(root, key) if not r.finished and r.kind != "debug"]  # debug runs in its launcher
    _refresh(root, recs)
    recs = [r for r in recs if not r.finished]
    running = request_stop(recs)
    deadline = time.monotonic() + KILL_WAIT_S
    while (left := _still_running(running)) and time.monotonic() < deadline:
        time.sleep(0.25)
    stop_now(left)
    for r in recs:
        r.state, r.end = "CANCELLED", r.end or time.time()
        save(root, r)
    return [r.job_id for r in recs]


def request_stop(recs: list[JobRecord]) -> list[JobRecord]:
    """Mark the jobs cancelled and ask them to stop: a running one at its next step boundary (SIGTERM), one not
    started yet at once. Returns the running ones (stop_now them if they do not end in time)."""
    from .preemption import cancel_marker

    for r in recs:  # before the signal: the job must see it when its SIGTERM handler runs
        marker = cancel_marker(Path(r.job_dir), r.job_id)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    running = [r for r in recs if r.kind == "local" or r.state == "RUNNING"]
    _scancel([r.job_id for r in recs if r not in running])
    _scancel([r.job_id for r in running if r.kind == "slurm"], "--signal=TERM")  # to the tasks, not the script
    for r in running:
        if r.kind == "local":
            _signal(_pid(r), signal.SIGTERM)  # submitit's local controller forwards it to its tasks
    return running


def stop_now(recs: list[JobRecord]) -> None:
    """End the jobs without waiting for a step boundary (checkpoints are written to a temporary name and renamed:
    one cut short is never taken for a complete one)."""
    _scancel([r.job_id for r in recs if r.kind == "slurm"])
    for r in recs:
        if r.kind == "local":
            try:  # the controller leads a process group of its own and its tasks (executor.py): end them all
                os.killpg(_pid(r), signal.SIGKILL)
            except ProcessLookupError:  # a controller started in its launcher's group: it stops its tasks itself
                _signal(_pid(r), signal.SIGINT)


KILL_WAIT_S = 30  # a cancelled running job's time to reach a step boundary and checkpoint before a hard stop


def _pid(r: JobRecord) -> int:
    return int(r.job_id.split("-")[1])


def _scancel(job_ids: list[str], *flags: str) -> None:
    if job_ids:
        # not check=True: a job may have ended since (scancel then says so and fails; nothing left to do)
        subprocess.run(["scancel", *flags, *job_ids], capture_output=True, timeout=60, check=False)


def _still_running(recs: list[JobRecord]) -> list[JobRecord]:
    slurm = [r.job_id for r in recs if r.kind == "slurm"]
    info = cluster.query(slurm) if slurm else {}
    over = cluster.TERMINAL | {cluster.GONE}
    return [r for r in recs if (_pid_alive(_pid(r)) if r.kind == "local" else
                                info.get(r.job_id, {}).get("State", "RUNNING") not in over)]


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
