"""A warm worker for local jobs: one process imports the heavy third-party libraries once, then forks a fresh
child per job, so a tiny stage does not spend seconds importing torch, transformers, diffusers and mlflow.

    gemctl train/run/sweep ── start() ──► server (this file, run as a script): imports PRELOAD, listens
    submitit's local controller ──► `python -P warm.py job -u -m submitit.core._submit FOLDER` (the client)
        client ── argv, env, cwd + its stdin/stdout/stderr fds (socket.send_fds) ──► server
        server ── fork ──► supervisor ── fork ──► job: adopts the fds, env, cwd, sys.path and argv, runs the module
        client ◄── job pid, then its wait status ── supervisor;  client ── signals it gets ──► supervisor ──► job

The client stands in for the job: submitit's controller signals it (USR2 before the time limit, SIGTERM,
SIGINT/SIGKILL on cancel), and it exits with the job's status (a job killed by a signal kills the client with the
same signal), so requeue (exit 144) and everything else behave as for a cold start. The job dies when its client
does (the supervisor sees the socket close and SIGKILLs it) and when its supervisor does (PDEATHSIG).
Whenever the warm path cannot give exactly a cold job's conditions, the client execs the cold command line
instead: no server, another protocol version, other interpreter options, or an environment that differs in a
variable other than the per-job ones (libraries read some variables at import time).

The server never imports the project's own packages (a job would run stale code instead of its snapshot) and
forks only while it has a single thread. Standard library only at module level: the client must start in
milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

SOCKET_ENV = "GEMCTL_WARM_SOCKET"  # where the server listens; set for everything the launching gemctl starts
ENABLE_ENV = "GEMCTL_WARM"  # "0": no warm worker, every local job starts cold
VERSION = 1  # of the client/server messages; a client from an older snapshot meeting a newer server goes cold

# Imported once by the server: what stage jobs import from outside the project, "module" or "module:attribute"
# (transformers and diffusers import a model's module when its class is first looked up). What every stage
# needs comes first: a job that arrives during the imports is served at once with what is loaded so far.
PRELOAD = (
    "submitit.core.submission",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "numpy",
    "PIL.Image",
    "h5py",
    "yaml",
    "torch",
    "torch.distributed",
    "torch.utils.data",
    "safetensors.torch",
    "tokenizers",
    "matplotlib",
    "transformers:Qwen3VLForConditionalGeneration",
    "transformers:Qwen2_5_VLForConditionalGeneration",
    "transformers:Qwen2Tokenizer",
    "transformers:AutoTokenizer",
    "transformers.image_utils",
    "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl",
    "diffusers:SanaTransformer2DModel",
    "diffusers:AutoencoderDC",
    "diffusers:FlowMatchEulerDiscreteScheduler",
    "accelerate:Accelerator",
)
PROJECT_PACKAGES = ("gemctl", "gem_models", "gem_stages")  # as snapshot.PROJECT_PACKAGES (not imported here)
# Variables that may differ between the server and a job: set per job by gemctl, DVC, submitit, SLURM or the
# shell that runs a stage command; read by the job at run time, not by libraries at import time.
# (MLFLOW_TRACKING_URI: mlflow.set_tracking_uri in the launching gemctl exports it; mlflow reads it per call.)
PER_JOB_PREFIXES = ("GEMCTL_", "SUBMITIT_", "SLURM_", "DVC_")
PER_JOB_NAMES = frozenset({"PYTHONPATH", "PYTHONSAFEPATH", "CUDA_VISIBLE_DEVICES", "PWD", "OLDPWD", "SHLVL", "_",
                           "MLFLOW_TRACKING_URI"})
RELAYED = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM,
           signal.SIGALRM)
_PR_SET_PDEATHSIG = 1


# --- launcher side (the gemctl process) ----------------------------------------------------------------------------
@dataclass
class Server:
    path: str  # its socket
    process: subprocess.Popen
    lifetime: int  # write end of the pipe whose closing tells it to exit

    def wait_ready(self, bound_s: float) -> bool:
        """Wait until it has imported everything in PRELOAD (at most bound_s); False if it has not."""
        ready, _, _ = select.select([self.process.stdout], [], [], bound_s)
        return bool(ready) and self.process.stdout.read(1) == b"r"

    def stop(self) -> None:
        """Let it exit now (jobs it started run on) and wait for it."""
        os.close(self.lifetime)
        self.process.wait(timeout=60)


_server: Server | None = None  # the one this process started, alive as long as this process


def start() -> Server | None:
    """Start a server in the background for the local jobs of this process and its children (they find it
    through $GEMCTL_WARM_SOCKET). It exits with this process. None when disabled or already running."""
    global _server
    if os.environ.get(ENABLE_ENV, "1") == "0" or _running():
        return None
    folder = tempfile.mkdtemp(prefix="gemctl-warm-")  # private (0700); the socket path must stay short
    path = os.path.join(folder, "socket")
    lifetime_r, lifetime_w = os.pipe()  # the write end stays here, not inherited: EOF = this process is gone
    # Its own stderr goes to a file, not to ours: a caller reading our output through a pipe (`gemctl ... | tee`,
    # subprocess.run) must see it end when we exit, not when the server has finished its current import.
    with open(os.path.join(folder, "server.log"), "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-u", "-P", __file__, "serve", path, str(lifetime_r)], pass_fds=(lifetime_r,),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != SOCKET_ENV})
    os.close(lifetime_r)
    os.environ[SOCKET_ENV] = path
    _server = Server(path, process, lifetime_w)
    return _server


def start_soon(delay_s: float = 1.0) -> None:
    """start() in delay_s, unless this process has ended by then. A command that turns out to have nothing to run
    (every stage up to date: it ends in well under a second) never pays for a worker that would import for
    seconds beside it; one that runs stages gives up at most delay_s of the worker's head start."""
    if os.environ.get(ENABLE_ENV, "1") == "0" or _running():
        return
    timer = threading.Timer(delay_s, start)
    timer.daemon = True  # an ending command does not wait for it
    timer.start()


def _running() -> bool:
    """A server of a gemctl above us is listening (an inherited socket whose server has gone does not count)."""
    path = os.environ.get(SOCKET_ENV)
    return bool(path) and os.path.exists(path)


def python_command(code_dir: Path | None = None, tasks: int = 1) -> str | None:
    """What submitit's LocalExecutor should run as `python` (None: its default, a cold start): this file's client,
    from the job's code snapshot (a requeued job restarts the same client). Jobs of several tasks start cold: a
    rank forked by the worker was seen to die after its last step, before its result was written (once in a few
    dozen two-rank runs, cause not found yet); a single-process job has not shown it."""
    if code_dir is None or tasks > 1 or not _running() or os.environ.get(ENABLE_ENV, "1") == "0":
        return None  # no snapshot: the job imports from $PYTHONPATH as it is, which the server cannot mirror
    script = Path(__file__).resolve()
    if (Path(code_dir) / "gemctl" / "launch" / script.name).is_file():
        script = Path(code_dir) / "gemctl" / "launch" / script.name
    return shlex.join([sys.executable, "-P", str(script), "job"])


# --- wire format: 4-byte length + JSON ------------------------------------------------------------------------------
def _send(conn: socket.socket, obj: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode()
    data = len(data).to_bytes(4, "big") + data
    sent = socket.send_fds(conn, [data], fds) if fds else conn.send(data)
    if sent < len(data):
        conn.sendall(data[sent:])


def _recv(conn: socket.socket, want_fds: int = 0, buf: bytearray | None = None) -> tuple[dict | None, list[int]]:
    """One message (None at end of stream) and the fds that came with it. buf: bytes already received beyond
    the previous message, kept for the next call (two messages can arrive in one read)."""
    buf = bytearray() if buf is None else buf
    fds: list[int] = []
    while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
        if want_fds and not fds:
            chunk, fds, _flags, _addr = socket.recv_fds(conn, 65536, want_fds)
        else:
            chunk = conn.recv(65536)
        if not chunk:
            return None, fds
        buf += chunk
    end = 4 + int.from_bytes(buf[:4], "big")
    message = json.loads(buf[4:end])
    del buf[:end]
    return message, fds


# --- client: stands in for the job in submitit's controller ----------------------------------------------------------
def client(args: list[str]) -> None:
    """args: the python command line submitit wanted to run (e.g. -u -m submitit.core._submit FOLDER)."""
    cold = [sys.executable, *args]
    path = os.environ.get(SOCKET_ENV)
    if not path:
        os.execv(sys.executable, cold)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    received = bytearray()
    try:
        conn.connect(path)
        _send(conn, {"version": VERSION, "args": args, "env": dict(os.environ), "cwd": os.getcwd()}, [0, 1, 2])
        reply, _ = _recv(conn, buf=received)  # waits while the server is still importing
    except OSError as e:
        reply = {"refused": f"cannot reach it ({e.strerror or e})"}
    if not reply or "refused" in reply:
        why = reply["refused"] if reply else "it closed the connection"
        os.write(2, f"gemctl: warm worker not used: {why}; starting cold\n".encode())
        conn.close()
        os.execv(sys.executable, cold)

    def relay(signum: int, _frame) -> None:
        with contextlib.suppress(OSError):  # the job has just ended: its status is on the way
            conn.sendall(f"{signum}\n".encode())

    for sig in RELAYED:
        signal.signal(sig, relay)
    status, _ = _recv(conn, buf=received)
    if status is None:
        os.write(2, b"gemctl: the warm worker lost this job\n")
        os._exit(1)
    code = os.waitstatus_to_exitcode(status["wait_status"])
    if code < 0:  # killed by a signal: die by the same one, as the cold process would have
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


# --- server --------------------------------------------------------------------------------------------------------
def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _refusal(request: dict, base_env: dict[str, str]) -> str | None:
    """Why this request cannot get a cold job's exact conditions here (None: it can)."""
    if request.get("version") != VERSION:
        return f"protocol version {request.get('version')} (the server speaks {VERSION})"
    args, env = request["args"], request["env"]
    if args[:2] != ["-u", "-m"] or len(args) < 3:
        return f"interpreter options {args[:2]} (only -u -m MODULE is served)"
    if not env.get("PYTHONSAFEPATH"):
        return "PYTHONSAFEPATH is not set (the server runs with -P)"

    def shared(e: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in e.items() if k not in PER_JOB_NAMES and not k.startswith(PER_JOB_PREFIXES)}

    mine, theirs = shared(base_env), shared(env)
    if mine != theirs:
        diff = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        return f"the job's environment differs in {', '.join(diff[:5])}"
    return None


def _preload(name: str) -> str | None:
    """Import one PRELOAD entry; why it failed, if it did (the jobs then import it, and report any error)."""
    import importlib

    module, _, attr = name.partition(":")
    try:
        mod = importlib.import_module(module)
        if attr:
            getattr(mod, attr)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    return None


def serve(path: str, lifetime_fd: int) -> tuple[dict, list[int]] | None:
    """Import PRELOAD and accept jobs until the launcher exits. Returns only in a forked job: its request, fds."""
    base_env = dict(os.environ)
    base_path = [p for p in sys.path if p not in _python_path(base_env, os.getcwd())]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)  # clients may connect from now on
    # before the imports: pyarrow's jemalloc (through mlflow) would start a background thread
    os.environ.setdefault("JE_ARROW_MALLOC_CONF", "background_thread:false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read at import; stage_runner sets it too
    todo = list(PRELOAD)
    try:
        while True:
            # between imports, serve whoever is waiting; once all are imported, block until a job or the end
            ready, _, _ = select.select([listener, lifetime_fd], [], [], 0 if todo else 5.0)
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG)[0]:  # reap finished supervisors
                    pass
            if lifetime_fd in ready:
                return None
            if listener in ready:
                job = _accept(listener, lifetime_fd, base_env, base_path)
                if job is not None:
                    return job
            elif todo:
                _preload(todo.pop(0))
                if not todo:
                    os.write(1, b"r")  # all imported: Server.wait_ready
    finally:
        if os.getpid() == _server_pid:
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)  # its socket and log


def _accept(listener: socket.socket, lifetime_fd: int, base_env: dict[str, str],
            base_path: list[str]) -> tuple[dict, list[int]] | None:
    """Take one request: refuse it, or fork its supervisor. Returns only in the forked job."""
    conn, _ = listener.accept()
    with contextlib.closing(conn):
        request, fds = _recv(conn, want_fds=3)
        why = _refusal(request, base_env) if request and len(fds) == 3 else "a bad request"
        stale = [m for m in sys.modules if m.split(".")[0] in PROJECT_PACKAGES]
        if why is None and stale:
            why = f"the server imported the project's own {stale[0]} (a job would run it, not its snapshot)"
        if why is None and _threads() > 1:
            _probe_fork()  # idle library pools (OpenBLAS) stop in their at-fork handlers
            if _threads() > 1:
                why = f"the server runs {_threads()} threads: a forked job would inherit locks held by them"
        if why is not None:
            with contextlib.suppress(OSError):
                _send(conn, {"refused": why})
            for fd in fds:
                os.close(fd)
            return None
        if os.fork() == 0:  # the supervisor
            listener.close()
            os.close(lifetime_fd)
            request["base_path"] = base_path
            return _supervise(conn, request, fds)
        for fd in fds:
            os.close(fd)
    return None


def _probe_fork() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def _supervise(conn: socket.socket, request: dict, fds: list[int]) -> tuple[dict, list[int]]:
    """In the supervisor: fork the job (which returns from here), relay signals to it, report its end."""
    supervisor = os.getpid()
    pid = os.fork()
    if pid == 0:
        import ctypes

        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != supervisor:  # it died before prctl
            os._exit(1)
        conn.close()
        return request, fds
    for fd in fds:
        os.close(fd)
    exited = os.pidfd_open(pid)
    try:
        _send(conn, {"pid": pid})
        pending = b""
        while True:
            ready, _, _ = select.select([conn, exited], [], [])
            if exited in ready:
                _, status = os.waitpid(pid, 0)
                _send(conn, {"wait_status": status})
                break
            chunk = conn.recv(4096)
            if not chunk:  # the client is gone: so is the job, as if it had been the client
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, int(line))
    except OSError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    os._exit(0)


def _python_path(env: dict[str, str], cwd: str) -> list[str]:
    """sys.path entries that $PYTHONPATH gives a new interpreter (empty and relative entries resolve to cwd)."""
    return [os.path.normpath(os.path.join(cwd, p)) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]


def become_job(request: dict, fds: list[int]) -> None:
    """In the forked job: take on the cold job's stdio, cwd, environment, import path and argv; run its module."""
    import importlib
    import runpy

    for sig in RELAYED + (signal.SIGCHLD,):
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[:] = _python_path(request["env"], request["cwd"]) + request["base_path"]
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    # fresh process entropy, as a cold interpreter would draw (random reseeds itself after fork)
    if "torch" in sys.modules:
        sys.modules["torch"].seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    module, *argv = request["args"][2:]
    sys.argv = [module, *argv]  # runpy replaces argv[0] with the module's file
    runpy.run_module(module, run_name="__main__", alter_sys=True)


_server_pid = os.getpid()

if __name__ == "__main__":
    if sys.argv[1] == "job":
        client(sys.argv[2:])
    elif sys.argv[1] == "serve":
        job = serve(sys.argv[2], int(sys.argv[3]))
        if job is not None:
            become_job(*job)
