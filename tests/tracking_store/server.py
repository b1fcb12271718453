"""A `gemctl mlflow serve` process for tests, and what the kernel says is listening."""

from __future__ import annotations

import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.pipeline.project_copy import GEMCTL, env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> set[str]:
    """Addresses with a TCP socket listening on `port` on this machine (from /proc/net/tcp and tcp6)."""
    out = set()
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(addr)
                # the kernel prints each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                out.add(socket.inet_ntop(socket.AF_INET if size == 4 else socket.AF_INET6, raw))
    return out


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    url: str  # the URL the server said jobs should use
    lines: list[str] = field(default_factory=list)  # what it printed up to "jobs log here..."

    stderr: IO[str] | None = None

    def stop(self) -> tuple[str, str]:
        """SIGTERM, as `kill` sends it; returns the rest of what it printed on stdout, and all of its stderr."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate()
        self.stderr.seek(0)
        return out, self.stderr.read()


def start(project: Path, *args: str) -> Server | subprocess.CompletedProcess:
    """`gemctl mlflow serve ARGS` in `project`; returns once it says where jobs log (a Server), or what it printed if
    it ended first (a CompletedProcess)."""
    stderr = tempfile.TemporaryFile("w+")  # the server's messages: a pipe nobody reads could fill and stop it
    proc = subprocess.Popen([GEMCTL, "mlflow", "serve", *args], cwd=project, stdout=subprocess.PIPE, stderr=stderr,
                            text=True, env=env())
    lines = []
    for line in proc.stdout:  # ends when the process does
        lines.append(line.rstrip("\n"))
        if line.startswith("jobs log here with --tracking-uri "):
            port = int(line.split()[5].rsplit(":", 1)[1])
            return Server(proc, port, line.split()[5], lines, stderr)
    out, _ = proc.communicate()
    stderr.seek(0)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "\n".join(lines) + out, stderr.read())


def descendants(pid: int) -> list[int]:
    """The processes started by `pid`, their children, and so on (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
