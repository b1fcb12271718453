"""The MLflow store at cluster scale: many jobs of an array writing one store at once.

Two ways, both tested with 16 concurrent writer processes (tests/tracking_store):

- one machine, the project's sqlite file: WAL mode (tracking.setup) lets readers and one writer proceed together;
  what remains is SQLite's "database is locked" - a writer that waited longer than the busy timeout, or a read
  transaction that could not become a write one because another writer committed first (SQLITE_BUSY_SNAPSHOT,
  which no timeout helps) - and the race of fresh processes creating the tables of a new store together. `install`
  makes every sqlite store of this process retry a locked call a bounded number of times (the failed call was
  rolled back: a retry cannot duplicate it), and create a store's tables under a file lock.
- many machines: `gemctl mlflow serve` runs MLflow's tracking server on one database (the project's sqlite file, or
  a database URL); jobs log to it over HTTP with --tracking-uri http://HOST:PORT. MLflow's REST client already
  retries a busy server (HTTP 503) with backoff.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gem_stages.errors import InputError

from .project import Project

BUSY_RETRIES = 10  # attempts after the first one; with the backoff below, up to about a minute of waiting
BACKOFF_S = 0.05  # first wait; doubled each attempt (with jitter, so that writers do not retry in step)
BACKOFF_MAX_S = 8.0  # the longest single wait
_BUSY = ("database is locked", "database table is locked", "database is busy", "sqlite_busy")

_local = threading.local()  # inside a retried store call: its inner store calls are not retried again
retried = 0  # calls of this process that were retried at least once (the concurrency tests report it)


def is_busy(exc: BaseException) -> bool:
    """Whether an exception (or one it was raised from) is SQLite saying another writer holds the database."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if any(s in str(exc).lower() for s in _BUSY):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def retrying(fn: Callable, retries: int = BUSY_RETRIES) -> Callable:
    """`fn`, retried while the database is locked (at most `retries` more times, then the error stands)."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        global retried
        if getattr(_local, "depth", 0):
            return fn(*args, **kwargs)
        for attempt in range(retries + 1):
            _local.depth = 1
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                if attempt == retries or not is_busy(e):
                    raise
                if attempt == 0:
                    retried += 1
            finally:
                _local.depth = 0
            time.sleep(min(BACKOFF_MAX_S, BACKOFF_S * 2 ** attempt) * random.uniform(0.5, 1.5))

    return call


def _retrying_store(store: Any) -> Any:
    """The store itself (isinstance checks still hold) with each public method retried while locked."""
    for name in dir(type(store)):
        if not name.startswith("_") and callable(getattr(type(store), name, None)):
            attr = getattr(store, name)
            if callable(attr):
                setattr(store, name, retrying(attr))
    return store


@contextlib.contextmanager
def _file_lock(db: Path):
    """Exclusive among the processes of this machine: held while a store's tables are created or migrated."""
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".init-lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (None: not a file-backed sqlite store)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def _sqlite_builder(build: Callable) -> Callable:
    def builder(store_uri, *args, **kwargs):
        db = sqlite_path(store_uri)
        with _file_lock(db) if db is not None else contextlib.nullcontext():
            store = retrying(build)(store_uri, *args, **kwargs)  # creating tables takes the write lock too
        return _retrying_store(store)

    builder.gemctl_retrying = True
    return builder


def install() -> None:
    """From now on, every sqlite store this process opens (tracking and model registry) retries locked calls and
    creates its tables under a file lock. Idempotent."""
    from mlflow.tracking._model_registry.utils import _get_store_registry
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    for registry in (_tracking_store_registry, _get_store_registry()):
        build = registry._registry.get("sqlite")
        if build is not None and not getattr(build, "gemctl_retrying", False):
            registry.register("sqlite", _sqlite_builder(build))
            with contextlib.suppress(AttributeError):  # a store opened before: opened again, through the builder
                registry._get_store_with_resolved_uri.cache_clear()


# --- reachability ------------------------------------------------------------------------------------------------
def _shown(text: str) -> str:
    """A user's value in a one-line message: control characters escaped."""
    return text if text.isprintable() else repr(text)[1:-1]


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return (text.splitlines() or [type(e).__name__])[0][:200]


def check_reachable(uri: str, option: str = "--tracking-uri") -> None:
    """A server (http/https) answers its health check; a database URL accepts a connection. One line if not."""
    scheme = uri.split(":", 1)[0].lower()
    if scheme in ("http", "https"):
        import requests

        try:
            r = requests.get(uri.rstrip("/") + "/health", timeout=10)
        except requests.RequestException as e:
            reason = "connection refused" if isinstance(e, requests.ConnectionError) and "refused" in str(e) \
                else _first_line(e)
            raise InputError(f"{option} '{_shown(uri)}': no MLflow server answers there ({reason}): start one "
                             "(gemctl mlflow serve) or fix the URI") from None
        if r.status_code != 200:
            raise InputError(f"{option} '{_shown(uri)}': the server there answers {r.status_code} to MLflow's "
                             "health check: is it an MLflow tracking server? Fix the URI") from None
    elif scheme.split("+")[0] in ("postgresql", "mysql", "mssql"):
        import sqlalchemy

        try:
            engine = sqlalchemy.create_engine(uri)
            with engine.connect():
                pass
            engine.dispose()
        except ModuleNotFoundError as e:
            raise InputError(f"{option} '{_redacted(uri)}': SQLAlchemy needs the database's Python driver ({e}): "
                             "install it in gemctl's environment") from None
        except Exception as e:  # refused, unknown host, bad credentials: the store cannot be used
            raise InputError(f"{option} '{_redacted(uri)}': the database cannot be reached ({_first_line(e)}): "
                             "start it or fix the URL") from None


def _redacted(uri: str) -> str:
    """A URL with its password replaced (the line is printed and may be logged)."""
    return _shown(re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", uri))


# --- gemctl mlflow serve -----------------------------------------------------------------------------------------
@dataclass
class ServeConfig:
    store: str  # SQLAlchemy URL of the backend store (sqlite:////abs/path.db, postgresql://...)
    artifacts: Path  # where artifacts logged through the server are kept (served by it)
    host: str = "127.0.0.1"  # interface to bind: loopback unless the user asks for another
    port: int = 5000
    workers: int = 4  # server processes (MLflow's default)


def default_store(project: Project) -> str:
    """The project's own store (not $GEMCTL_TRACKING_URI: that may point at the server being started)."""
    return f"sqlite:///{(project.root / 'mlruns' / 'mlflow.db').resolve()}"


def store_url(store: str | None, project: Project) -> str:
    """--store as a URL: a database URL as it is; a path (relative to the current folder) as a sqlite file."""
    if not store:
        return default_store(project)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", store):
        return store
    return f"sqlite:///{Path(store).expanduser().resolve()}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    return False


def check_store(url: str) -> None:
    """The store can be used as a server's backend: a database (not a server or a folder), reachable, its tables
    created (under the file lock: the server's workers then find them and migrate nothing)."""
    from . import preflight

    scheme = url.split(":", 1)[0].lower()
    if scheme.split("+")[0] not in ("sqlite", "postgresql", "mysql", "mssql"):
        raise InputError(f"--store '{_redacted(url)}': not a database: give a database file (path/to/mlflow.db) "
                         "or a database URL (sqlite:///, postgresql://, mysql://)")
    try:
        preflight.check_tracking(url)
        check_reachable(url, option="--store")
    except InputError as e:  # preflight's lines name the option jobs use; here the store is --store
        raise InputError(str(e).replace("--tracking-uri", "--store", 1)) from None
    db = sqlite_path(url)
    if db is not None and db.exists() and not os.access(db, os.R_OK | os.W_OK):
        raise InputError(f"--store '{_redacted(url)}': the database file cannot be read and written by this user: "
                         "fix its permissions or give another store")
    install()
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    try:
        _tracking_store_registry.get_store(url)
    except Exception as e:
        raise InputError(f"--store '{_redacted(url)}': MLflow cannot open it as a store ({_first_line(e)}): fix the "
                         "URL, or give another database") from None


def check_port(host: str, port: int) -> None:
    """The address is free to bind here (the server's own error would come after seconds, and many lines)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            raise InputError(f"cannot serve on {host}:{port} ({e.strerror or e}): choose another --port, or --host "
                             "an address of this machine") from None


def allowed_hosts(host: str, port: int) -> list[str]:
    """Host headers the server accepts: MLflow's default (loopback, private addresses) plus this machine's names,
    which jobs on other nodes use to reach it (MLflow would refuse them as a possible DNS rebinding)."""
    from mlflow.server.security_utils import get_default_allowed_hosts

    names = {socket.gethostname(), socket.getfqdn()} | ({host} if not is_loopback(host) else set())
    names -= {"0.0.0.0", "::", ""}
    return get_default_allowed_hosts() + sorted(f"{n}{p}" for n in names for p in ("", f":{port}"))


def url_for_jobs(host: str, port: int) -> str:
    """The URL jobs give as --tracking-uri: the address bound, or this machine's name for a wildcard address."""
    name = socket.getfqdn() if host in ("0.0.0.0", "::", "[::]") else host
    return f"http://{f'[{name}]' if ':' in name else name}:{port}"


def server_command(cfg: ServeConfig) -> list[str]:
    # the store URL (it may hold a password) reaches the server in its environment (server_env), not on its command
    # line, which every user of a shared login node can read
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--serve-artifacts", "--artifacts-destination", str(cfg.artifacts),
           "--host", cfg.host, "--port", str(cfg.port), "--workers", str(cfg.workers),
           "--uvicorn-opts", "--log-level warning"]  # MLflow's own warnings and errors still show
    if not is_loopback(cfg.host):
        cmd += ["--allowed-hosts", ",".join(allowed_hosts(cfg.host, cfg.port))]
    return cmd


def server_env(cfg: ServeConfig) -> dict[str, str]:
    """The server's environment: its store, and MLflow's job runner (GenAI evaluation jobs: more processes,
    nothing gemctl logs uses) off unless the user turned it on."""
    return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ,
            "MLFLOW_BACKEND_STORE_URI": cfg.store, "MLFLOW_REGISTRY_STORE_URI": cfg.store}


def wait_until_serving(proc: subprocess.Popen, url: str) -> bool:
    """True once the server answers its health check; False if its process ended first. No deadline of its own: a
    loaded machine may take minutes to start MLflow's workers, and the user sees the wait (Ctrl-C stops it)."""
    import requests

    while proc.poll() is None:
        with contextlib.suppress(requests.RequestException):
            if requests.get(url + "/health", timeout=5).status_code == 200:
                return True
        time.sleep(0.5)
    return False
