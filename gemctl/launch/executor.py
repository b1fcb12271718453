"""Run a function as a job (debug: in this process, local: a subprocess, slurm: sbatch) and block on it like
`sbatch -W`, reporting state changes and log lines as they come.

    result = launch(partial(train, cfg), kind="slurm", resources=Resources(gpus_per_node=8), job_dir=d, name="stage3")

The function must be picklable with no arguments (a functools.partial of a module-level function). It runs once
per rank, from a snapshot of the project's code taken at submit time (see snapshot.py), with signals caught for
preemption-safe resume (preemption.py) and torch.distributed variables exported (distributed.py).
submitit is imported inside functions: `gemctl --help` must not pay for it.
"""

import contextlib
import enum
import functools
import os
import re
import shlex
import sys
import time
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gem_stages.errors import InputError

from . import cluster, preemption, registry, snapshot
from .resources import Resources
from .runner import Failure, JobMain


class Executor(enum.StrEnum):
    """Where a job runs. A str Enum: typer offers its values as choices, and it compares equal to (and prints
    as) the plain string ("slurm"), which is what travels in $GEMCTL_EXECUTOR and in job records."""

    LOCAL = "local"  # a subprocess of this machine (submitit's LocalExecutor): signals and requeue like SLURM
    SLURM = "slurm"  # sbatch on the cluster the SLURM client tools point at
    DEBUG = "debug"  # in this process, at wait time (pdb-friendly; no snapshot, no signals)


Kind = Literal["local", "slurm", "debug"]
_START_LINE = re.compile(r"gemctl: rank 0/\d+ on .*, restart (\d+),")  # printed by runner.JobMain
KINDS = tuple(e.value for e in Executor)


@dataclass
class JobUpdate:
    """A state change (state set) or a new line in one rank's log (line set)."""

    job_id: str
    state: str | None = None
    line: str | None = None
    stream: str = ""  # "stdout" | "stderr"
    task: int = 0  # rank


@dataclass
class LaunchResult:
    job_id: str
    state: str  # COMPLETED, FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, ...
    exit_code: int | None
    value: Any  # what the function returned on rank 0 (None unless COMPLETED)
    values: list  # what it returned on each rank
    error: str | None  # the job's traceback, or why SLURM ended it
    stdout: Path  # rank 0's logs
    stderr: Path
    requeues: int
    node: str

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED"

    def log_tail(self, n: int = 40) -> str:
        """The last n lines of rank 0's log (stdout: the job writes stderr there too; else stderr, which holds what
        was written before that): what to show when a job failed."""
        for p in (self.stdout, self.stderr):
            if p.exists() and p.stat().st_size:
                return "\n".join(p.read_text(errors="replace").splitlines()[-n:])
        return ""


class _Tail:
    """New complete lines of a log file since the last call."""

    def __init__(self, path: Path, stream: str, task: int) -> None:
        self.path, self.stream, self.task, self.offset, self.partial = path, stream, task, 0, ""

    def lines(self, final: bool = False) -> list[str]:
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
            self.offset += len(chunk)
            *lines, self.partial = (self.partial + chunk.decode(errors="replace")).split("\n")
        else:
            lines = []
        if final and self.partial:
            lines, self.partial = lines + [self.partial], ""
        return lines


class JobHandle:
    """A submitted job. `wait()` blocks until it ends; `wait_all()` waits for many with one sacct call per poll."""

    def __init__(self, job: Any, kind: str, resources: Resources, name: str, job_dir: Path,
                 project: Path | None, tags: Mapping[str, str]) -> None:
        self._job = job
        self.kind = kind
        self.job_id = {"slurm": job.job_id, "local": f"local-{job.job_id}"}.get(kind, f"debug-{job.job_id[6:]}")
        self.num_tasks = 1 if kind == "debug" else resources.world_size
        self._task_paths = [job.paths] if self.num_tasks == 1 else [job.task(k).paths for k in range(self.num_tasks)]
        self.stdout, self.stderr = self._task_paths[0].stdout, self._task_paths[0].stderr
        self.state, self.node, self.requeues, self._ran = "PENDING", "", 0, False
        self.result: LaunchResult | None = None
        self._exit_code: int | None = None
        self._ended = False  # SLURM says the job is over, or the local controller process exited
        self._local_state = ""  # submitit's LocalJob.state at the last poll
        self._grace_since: float | None = None
        self._unsettled_since: float | None = None  # since when SLURM says GONE or COMPLETING (see _observe)
        self._loaded: dict[int, tuple] = {}  # task -> ("success"|"error", value), read once
        self._tails = [_Tail(getattr(p, s), s, k) for k, p in enumerate(self._task_paths) for s in ("stdout", "stderr")]
        self._project = project
        self._record = registry.JobRecord(
            job_id=self.job_id, kind=kind, name=name, state=self.state, submitted=time.time(),
            stdout=str(self.stdout), stderr=str(self.stderr), job_dir=str(job_dir), tags=dict(tags),
        )
        self._save()

    def __repr__(self) -> str:
        return f"JobHandle({self.job_id}, {self.state})"

    def cancel(self) -> None:
        if self.kind != "debug":
            self._job.cancel(check=False)

    def wait(self, on_update: Callable[[JobUpdate], None] | None = None) -> LaunchResult:
        return wait_all([self], on_update)[0]

    # -- internals, driven by wait_all --

    def _save(self) -> None:
        if self._project is not None:
            registry.save(self._project, self._record)

    def _set(self, state: str, emit: Callable[[JobUpdate], None], node: str = "") -> None:
        if state == self.state:
            return
        if state == "RUNNING":
            self._ran = True
        elif self._ran and state in ("REQUEUED", "PENDING", "REQUEUE_HOLD", "REQUEUE_FED"):
            # back in the queue after running (squeue says PENDING, sacct REQUEUED; either may be missed)
            self._ran = False
            self.requeues += 1
            state = "REQUEUED"
        self.state = state
        self.node = node or self.node
        rec = self._record
        rec.state, rec.node, rec.requeues = state, self.node, self.requeues
        if state == "RUNNING" and rec.start is None:
            rec.start = time.time()
        if state in cluster.TERMINAL or state == "LOST":
            rec.end = time.time()
        self._save()
        emit(JobUpdate(self.job_id, state=state))

    def _observe(self, info: dict[str, dict[str, str]], emit: Callable[[JobUpdate], None]) -> None:
        if self.kind == "slurm":
            row = info.get(self.job_id)
            state = row["State"] if row else ""
            if state in (cluster.GONE, "COMPLETING"):
                # out of the queue and unknown to accounting, or its tasks are over but SLURM has not let go of it:
                # after GONE_SETTLE_S take it as ended; its result files, or the cancel marker, tell how
                self._unsettled_since = self._unsettled_since or time.time()
                self._ended = time.time() - self._unsettled_since >= cluster.GONE_SETTLE_S
                if state == "COMPLETING":
                    self._set(state, emit, row.get("NodeList", ""))
            elif row:  # neither squeue nor sacct answered: ask again next time
                self._unsettled_since = None
                self._set(state, emit, row.get("NodeList", ""))
                self._ended = state in cluster.TERMINAL
                code, _, sig = row.get("ExitCode", "").partition(":")
                if code.isdigit() and self._ended:
                    self._exit_code = int(code) or (128 + int(sig) if sig.isdigit() and int(sig) else 0)
        elif self.kind == "local":
            # LocalJob.state polls the controller process: RUNNING, FINISHED (it exited; the tasks have ended),
            # INTERRUPTED (it was killed by a signal), UNKNOWN (could not tell: ask again next time)
            state = self._job.state
            if state == "RUNNING":
                self._set("RUNNING", emit, "localhost")
            self._ended = state not in ("RUNNING", "UNKNOWN")
            self._local_state = state

    def _pump(self, emit: Callable[[JobUpdate], None], final: bool = False) -> None:
        for t in self._tails:
            for line in t.lines(final):
                m = _START_LINE.match(line) if t.task == 0 and t.stream == "stdout" else None
                if m:  # each run says how many times the job was requeued: polls may miss a short PENDING
                    restart = int(m.group(1))
                    if self.kind == "local" and restart > self.requeues:
                        # the local controller restarted the tasks (one exited with LOCAL_REQUEUE_RETURN_CODE):
                        # report it as SLURM's requeue reads
                        self._set("REQUEUED", emit)
                        self._set("RUNNING", emit)
                    self.requeues = self._record.requeues = max(self.requeues, restart)
                emit(JobUpdate(self.job_id, line=line, stream=t.stream, task=t.task))

    def _outcomes(self) -> list[tuple | None]:
        from submitit.core.utils import pickle_load

        for k, p in enumerate(self._task_paths):
            if k not in self._loaded and p.result_pickle.exists():
                try:
                    self._loaded[k] = pickle_load(p.result_pickle)
                except EOFError:  # being written (submitit writes elsewhere and renames, but shared FS...)
                    pass
        return [self._loaded.get(k) for k in range(len(self._task_paths))]

    def _cancelled(self) -> bool:
        return preemption.cancel_marker(Path(self._record.job_dir), self.job_id).exists()

    def _grace(self, seconds: float) -> bool:
        """True for `seconds` after the first call: lets SLURM or the file system catch up."""
        self._grace_since = self._grace_since or time.time()
        return time.time() - self._grace_since < seconds

    def _done(self, emit: Callable[[JobUpdate], None]) -> bool:
        outcomes = self._outcomes()
        errors = [o[1] for o in outcomes if o and o[0] == "error"]
        if not self._ended and not all(outcomes) and not errors:
            return False
        if self.kind == "slurm" and not self._ended and errors:
            if self._grace(10):
                return False  # a rank failed: wait for SLURM to end the job, to report its exit code
            self.cancel()  # the other ranks still run (stuck in a collective?): free the nodes
        if self.kind == "slurm" and self.state == "COMPLETED" and not all(outcomes) and self._grace(5):
            return False  # ended cleanly: its result file may not be visible yet (shared file systems)
        self._pump(emit, final=True)
        values = [o[1] if o and o[0] == "success" else None for o in outcomes]
        if outcomes and all(o and o[0] == "success" for o in outcomes):
            state, error, code = "COMPLETED", None, 0
        elif errors:
            state, error, code = "FAILED", errors[0], self._exit_code or 1
        elif self._cancelled():  # `gemctl cancel`: the job may have ended on its own before SLURM stopped it
            state, error, code = "CANCELLED", _why("CANCELLED", self), self._exit_code
        else:
            state = self.state if self.kind == "slurm" and self.state in cluster.TERMINAL - {"COMPLETED"} else (
                "LOST" if self.kind == "slurm" else "FAILED")  # SLURM never said how it ended (GONE, COMPLETING)
            error, code = _why(state, self), self._exit_code
        self._record.exit_code = code
        self._set(state, emit)
        self.result = LaunchResult(
            job_id=self.job_id, state=state, exit_code=code, value=values[0], values=values, error=error,
            stdout=self.stdout, stderr=self.stderr, requeues=self.requeues, node=self.node,
        )
        return True

    def _run_in_process(self, emit: Callable[[JobUpdate], None]) -> None:
        self._set("RUNNING", emit, "in-process")
        value = self._job.result()
        failed = isinstance(value, Failure)
        self._record.exit_code = 1 if failed else 0
        self._set("FAILED" if failed else "COMPLETED", emit)
        self.result = LaunchResult(
            job_id=self.job_id, state=self.state, exit_code=self._record.exit_code,
            value=None if failed else value, values=[None if failed else value],
            error=value.traceback if failed else None, stdout=self.stdout, stderr=self.stderr, requeues=0,
            node="in-process",
        )


def _why(state: str, h: JobHandle) -> str:
    if h.kind == "local" and state == "FAILED":
        what = ("its controller process was killed" if h._local_state == "INTERRUPTED" else
                "its process ended without a result (killed, e.g. by SIGKILL or the out-of-memory killer?)")
        return f"job {h.job_id} failed: {what}; log: {h.stdout}"
    reasons = {
        "TIMEOUT": "hit its time limit (raise resources.time_min, or make the training code stop on should_stop)",
        "CANCELLED": "was cancelled",
        "OUT_OF_MEMORY": "ran out of memory (raise resources.mem_gb)",
        "NODE_FAIL": "lost its node",
        "PREEMPTED": "was preempted and not requeued (its checkpoint is kept: run the stage again to resume)",
        "LOST": ("lost its controller process" if h.kind == "local" else
                 "ended without a result, and SLURM cannot say how (gone from the queue and unknown to accounting, "
                 "or stuck in COMPLETING): see its log"),
    }
    code = f", exit code {h._exit_code}" if h._exit_code is not None else ""
    return f"job {h.job_id} {reasons.get(state, f'ended without a result ({state}{code})')}; log: {h.stdout}"


def wait_all(handles: Sequence[JobHandle], on_update: Callable[[JobUpdate], None] | None = None) -> list[LaunchResult]:
    """Block until every job has ended; on_update gets state changes and new log lines of all of them.

    Ctrl-C stops the jobs as `gemctl cancel` does (each checkpoints at its next step boundary and is not
    requeued), waits for them to end CANCELLED, then raises KeyboardInterrupt; a second Ctrl-C, or
    registry.KILL_WAIT_S without an end, stops them at once."""
    emit = on_update or (lambda _u: None)
    for h in handles:
        if h.result is None:
            emit(JobUpdate(h.job_id, state=h.state))  # PENDING: the job id, as soon as there is one
    try:
        for h in handles:
            if h.kind == "debug" and h.result is None:
                h._run_in_process(emit)
        _wait([h for h in handles if h.result is None], emit)
    except KeyboardInterrupt:
        for h in handles:
            if h.kind == "debug" and h.state == "RUNNING" and h.result is None:  # the interrupt ended it
                h._set("CANCELLED", emit)
        _stop([h for h in handles if h.result is None and h.kind != "debug"], emit)
        raise
    return [h.result for h in handles]  # type: ignore[misc]


def _wait(waiting: list[JobHandle], emit: Callable[[JobUpdate], None], bound_s: float | None = None) -> None:
    """Poll until the jobs have ended (their .result set), or for bound_s at most."""
    t0, next_query = time.time(), 0.0
    while waiting:
        now = time.time()
        if now >= next_query:
            # sacct every 0.5 s at first, then less often (a week-long job should not poll once a second);
            # result files are checked on every pass, so a finished job is seen at once anyway
            slurm_ids = [h.job_id for h in waiting if h.kind == "slurm"]
            info = cluster.query(slurm_ids) if slurm_ids else {}
            for h in waiting:
                h._observe(info, emit)
            next_query = now + min(15.0, max(0.5, (now - t0) / 20))
        for h in waiting:
            h._pump(emit)
        waiting = [h for h in waiting if not h._done(emit)]
        if waiting and bound_s is not None and time.time() - t0 >= bound_s:
            return
        if waiting:
            time.sleep(0.2)


def _stop(handles: list[JobHandle], emit: Callable[[JobUpdate], None]) -> None:
    """After Ctrl-C: ask the jobs to stop at their next step boundary and wait for them; stop them at once on a
    second Ctrl-C or after registry.KILL_WAIT_S."""
    if not handles:
        return
    ids = " ".join(h.job_id for h in handles)
    os.write(2, f"gemctl: stopping job {ids} at its next step boundary (Ctrl-C again to stop at once)\n".encode())
    why = f"not stopped after {registry.KILL_WAIT_S} s"
    try:
        registry.request_stop([h._record for h in handles])
        _wait(handles, emit, bound_s=registry.KILL_WAIT_S)
    except KeyboardInterrupt:
        why = "Ctrl-C again"
    left = [h for h in handles if h.result is None]
    if left:
        os.write(2, f"gemctl: {why}: stopping job {' '.join(h.job_id for h in left)} now\n".encode())
        registry.stop_now([h._record for h in left])
        _wait(left, emit)


def _slurm_params(res: Resources, name: str, code_dir: Path | None) -> dict[str, Any]:
    p: dict[str, Any] = {
        "job_name": name, "time": res.time_min, "nodes": res.nodes, "ntasks_per_node": res.ntasks_per_node,
        "cpus_per_task": res.cpus_per_task, "signal_delay_s": res.signal_delay_s,
        "array_parallelism": res.array_parallelism,
        "setup": snapshot.setup_lines(code_dir) if code_dir else [],
        "srun_args": ["--kill-on-bad-exit=1"],  # one rank crashed: stop the others, not hang in a collective
    }
    if res.gpus_per_node:
        p["gpus_per_node"] = res.gpus_per_node
    if res.mem_gb is not None:
        p["mem"] = f"{int(res.mem_gb * 1024)}M"
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(res, key) is not None:
            p[key] = getattr(res, key)
    if res.extra_sbatch:  # an empty value is a bare flag (--exclusive)
        p["additional_parameters"] = {k.lstrip("-"): (v if v != "" else True) for k, v in res.extra_sbatch.items()}
    return p


def _submit(fns: Sequence[Callable[[], Any]], *, kind: str, resources: Resources, job_dir: Path, name: str,
            project: Path | None, tags: Sequence[Mapping[str, str]], code: Mapping[str, Path] | None,
            array: bool) -> list[JobHandle]:
    import submitit
    from submitit.core.utils import FailedJobError, environment_variables

    if kind not in KINDS:
        raise InputError(f"unknown executor '{kind}' (one of: {', '.join(KINDS)})")
    kind = Executor(kind).value  # the plain string, in job records and job ids
    job_dir = Path(job_dir).absolute()
    for what, text in (("job name", name), ("job folder", str(job_dir))):
        # both reach the job script (quoted); a line break in either would begin a line the shell runs
        if not text.isprintable():
            raise InputError(f"{what} {text!r} holds a line break or control character; use a one-line name")
    job_dir.mkdir(parents=True, exist_ok=True)
    if kind == "slurm":
        cluster.check(resources)
    if kind == "local" and resources.nodes > 1:
        raise InputError(f"resources.nodes={resources.nodes}: the local executor runs on this machine only")
    # debug runs in this process, which has imported the working tree already: no snapshot there
    code_dir = snapshot.take(job_dir, code) if kind != "debug" and code != {} else None
    env: dict[str, str] = {}
    if kind == "debug":
        ex = submitit.DebugExecutor(folder=job_dir)
    elif kind == "local":
        from . import warm  # a warm worker, when the launching gemctl started one: forks instead of importing

        ex = submitit.LocalExecutor(folder=job_dir,
                                    python=warm.python_command(code_dir, tasks=resources.ntasks_per_node))
        ex.update_parameters(timeout_min=resources.time_min, tasks_per_node=resources.ntasks_per_node,
                             gpus_per_node=resources.gpus_per_node, signal_delay_s=resources.signal_delay_s)
        # the snapshot goes through the environment, not `setup`: with setup submitit starts the controller
        # through a shell, whose pid (the job id) then does not forward the SIGTERM and SIGINT of a cancel
        if code_dir:
            path = ":".join(x for x in (str(code_dir), os.environ.get("PYTHONPATH", "")) if x)
            env = {"PYTHONPATH": path, "PYTHONSAFEPATH": "1", "GEMCTL_CODE": str(code_dir)}
    else:
        ex = submitit.SlurmExecutor(folder=job_dir)
        ex.update_parameters(**_slurm_params(resources, name, code_dir))
    mains = [JobMain(fn, resources.max_requeues, in_process=kind == "debug") for fn in fns]
    try:
        with environment_variables(**env), _controller_in_own_session():
            if array:
                with ex.batch():
                    jobs = [ex.submit(m) for m in mains]
            else:
                jobs = [ex.submit(mains[0])]
    except FailedJobError as e:  # sbatch said no (bad account, qos, constraint...): its last line says why
        lines = [x for x in str(e).splitlines() if x.strip()]
        raise InputError(f"sbatch refused the job: {lines[-1] if lines else e}") from None
    return [JobHandle(j, kind, resources, name, job_dir, project, t) for j, t in zip(jobs, tags)]


@contextlib.contextmanager
def _controller_in_own_session():
    """Start submitit's local controllers in a session of their own. Ctrl-C in the terminal then reaches this
    launcher only, which stops the job as `gemctl cancel` does; the controller, signalled too, would kill its tasks
    within a second, mid-step. (submitit's start_controller takes no Popen arguments: swap the module it calls
    Popen through, for the duration of a submit; tests/launch/test_submitit_api.py pins that call.)"""
    from submitit.local import local

    real = local.subprocess
    local.subprocess = types.SimpleNamespace(Popen=functools.partial(real.Popen, start_new_session=True))
    try:
        yield
    finally:
        local.subprocess = real


def kind_from_env(default: Kind | Executor = Executor.LOCAL) -> Executor:
    """The executor for a stage command: $GEMCTL_EXECUTOR (set by `gemctl ... --executor`), else default.
    An env var, not a stage parameter: where a stage runs does not change what it computes, so DVC must not
    re-run it when only that changes."""
    kind = os.environ.get("GEMCTL_EXECUTOR", "") or default
    if kind not in KINDS:
        raise InputError(f"GEMCTL_EXECUTOR={kind!r} is not an executor (one of: {', '.join(KINDS)})")
    return Executor(kind)


def submit(fn: Callable[[], Any], *, kind: Kind | Executor, resources: Resources, job_dir: Path, name: str,
           project: Path | None = None, tags: Mapping[str, str] | None = None,
           code: Mapping[str, Path] | None = None) -> JobHandle:
    """Submit fn() and return at once. project: folder whose job registry records it (for `gemctl status`);
    tags: stage/point/sweep/run labels for that record; code: import name -> folder to snapshot
    (None = the project's packages, {} = no snapshot: the job imports whatever its PYTHONPATH has)."""
    return _submit([fn], kind=kind, resources=resources, job_dir=job_dir, name=name, project=project,
                   tags=[tags or {}], code=code, array=False)[0]


def launch(fn: Callable[[], Any], *, kind: Kind | Executor, resources: Resources, job_dir: Path, name: str,
           on_update: Callable[[JobUpdate], None] | None = None, project: Path | None = None,
           tags: Mapping[str, str] | None = None, code: Mapping[str, Path] | None = None) -> LaunchResult:
    """Submit fn() and block until it ends (through requeues), like `sbatch -W`. Ctrl-C cancels the job: it
    checkpoints at its next step boundary and ends CANCELLED (see wait_all); a second Ctrl-C ends it at once."""
    handle = submit(fn, kind=kind, resources=resources, job_dir=job_dir, name=name, project=project, tags=tags,
                    code=code)
    try:
        return handle.wait(on_update)
    except KeyboardInterrupt:
        if handle.result is None:  # a debug job: it ran in this process, and the interrupt ended it
            raise
        return handle.result  # stopped by wait_all: CANCELLED, unless it ended otherwise first


def launch_array(fns: Sequence[Callable[[], Any]], *, kind: Kind | Executor, resources: Resources, job_dir: Path, name: str,
                 project: Path | None = None, tags: Sequence[Mapping[str, str]] | None = None,
                 code: Mapping[str, Path] | None = None) -> list[JobHandle]:
    """Submit the functions as ONE job array (at most resources.array_parallelism run at once) and return
    their handles without waiting; then `wait_all(handles, on_update)`. tags: one mapping per function.
    (The local executor starts them all at once; debug runs them one by one in wait_all.)"""
    fns = list(fns)
    tags = list(tags) if tags is not None else [{} for _ in fns]
    if len(tags) != len(fns):
        raise InputError(f"launch_array: {len(fns)} functions but {len(tags)} tag sets")
    if not fns:
        return []
    return _submit(fns, kind=kind, resources=resources, job_dir=job_dir, name=name, project=project, tags=tags,
                   code=code, array=True)


def dry_run(*, resources: Resources, job_dir: Path, name: str, array_size: int | None = None,
            code: Mapping[str, Path] | None = None) -> str:
    """The sbatch script that `launch(kind="slurm")` would submit (nothing is submitted or copied)."""
    job_dir = Path(job_dir).absolute()
    code_dir = None
    if code != {}:
        code_dir = job_dir / "code" / snapshot.content_hash(snapshot.project_packages() if code is None else code)
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(job_dir))])
    map_count = array_size if array_size and array_size > 1 else None
    return sbatch_script(command, job_dir, map_count, _slurm_params(resources, name, code_dir))


def sbatch_script(command: str, folder: Path, map_count: int | None, params: Mapping[str, Any]) -> str:
    """submitit's sbatch script for these SlurmExecutor parameters. submitit has no public way to render the
    script without submitting (SlurmExecutor writes it only inside submit), so this is the one place that calls
    its private `_make_sbatch_string`; tests/launch/test_submitit_api.py fails loudly if it changes."""
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command=command, folder=folder, map_count=map_count, **params)
