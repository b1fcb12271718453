"""`gemctl mlflow ...`: the tracking store as a server that the jobs of a cluster log to."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

app = typer.Typer(help="The MLflow tracking store: serve it to the jobs of a cluster.", no_args_is_help=True)
console = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind. 127.0.0.1 (default): this machine only; 0.0.0.0: "
                                           "every interface (jobs on other nodes), without authentication.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 5000,
    store: Annotated[str | None, typer.Option(help="Database the server keeps runs in: a sqlite file "
                                                   "(path/to/mlflow.db) or a database URL (postgresql://...). "
                                                   "Default: the project's own store, mlruns/mlflow.db.")] = None,
    workers: Annotated[int, typer.Option(help="Server processes.", min=1)] = 4,
) -> None:
    """Run an MLflow tracking server on the project's store (or --store), until Ctrl-C. Jobs log through it with
    --tracking-uri http://HOST:PORT (or GEMCTL_TRACKING_URI); artifacts logged through it are kept and served
    beside the project's store (mlruns/artifacts)."""
    from .cli import _project
    from .tracking_store import (
        ServeConfig,
        _redacted,
        check_port,
        check_store,
        is_loopback,
        server_command,
        server_env,
        store_url,
        url_for_jobs,
        wait_until_serving,
    )

    project = _project()
    url = store_url(store, project)
    check_port(host, port)  # first: it writes nothing
    check_store(url)
    cfg = ServeConfig(store=url, artifacts=(project.root / "mlruns" / "artifacts").resolve(), host=host, port=port,
                      workers=workers)
    if not is_loopback(host):
        err.print(Text.assemble(("warning:", "yellow"), f" serving on {host}: anyone who can reach this machine on "
                                f"port {port} can read and change every run in the store (MLflow's server has no "
                                "login); on a shared cluster prefer the default 127.0.0.1 and an SSH tunnel"))
    Path(cfg.artifacts).mkdir(parents=True, exist_ok=True)
    # its own process group: `mlflow server` starts uvicorn, which starts the workers; stopping gemctl stops all
    # MLflow's own messages go to stderr: stdout holds gemctl's lines (where the server is, how jobs reach it)
    proc = subprocess.Popen(server_command(cfg), start_new_session=True, stdout=sys.stderr, env=server_env(cfg))
    jobs_url = url_for_jobs(host, port)
    local = f"http://127.0.0.1:{port}" if host in ("0.0.0.0", "::", "[::]") else jobs_url
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the server as Ctrl-C does
    console.print(f"starting MLflow's server on {host}:{port} ({workers} worker(s))...")
    try:
        if not wait_until_serving(proc, local):
            err.print(Text.assemble(("error:", "red"), f" the MLflow server did not start (exit {proc.returncode};"
                                    " its messages are above)"))
            raise typer.Exit(1)
        reach = ("loopback only: jobs on this machine can log here, other machines cannot"
                 if is_loopback(host) else f"bound to {host}: reachable from other machines")
        console.print(f"serving MLflow at {jobs_url} ({reach})")
        console.print(f"store {_redacted(url)}; artifacts in {cfg.artifacts}")
        console.print(f"jobs log here with --tracking-uri {jobs_url} (or GEMCTL_TRACKING_URI={jobs_url}); Ctrl-C "
                      "stops the server")
        code = proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        console.print("server stopped")
        return
    finally:
        if proc.poll() is None:
            _stop(proc)
    if code != 0:
        err.print(Text.assemble(("error:", "red"), f" the MLflow server stopped (exit {code})"))
        raise typer.Exit(1)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _stop(proc: subprocess.Popen) -> int:
    """Stop the server's whole process group (SIGTERM: uvicorn finishes requests in flight); its exit code."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()
