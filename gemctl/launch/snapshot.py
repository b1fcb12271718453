"""Jobs run the code as it was when they were submitted.

A queued job may start hours later and a requeued one restarts from scratch: if it imported the working tree it
would run whatever the user has edited since. So at submit time the project's packages are copied to
<job_dir>/code/<content hash>/<import name>/ (reused when the hash exists) and the job puts that folder first on
PYTHONPATH. PYTHONPATH beats the setuptools editable finder (appended to sys.meta_path), and PYTHONSAFEPATH=1 keeps
`python -m submitit...` from putting the current directory (the repo root, with its gemctl/ folder) first.
"""

import hashlib
import importlib.util
import os
import shlex
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from gem_stages.files import current_umask

PROJECT_PACKAGES = ("gemctl", "gem_models", "gem_stages")
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".egg-info")


def project_packages() -> dict[str, Path]:
    """Import name -> source folder of the project's packages, found without importing them."""
    found = {}
    for name in PROJECT_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            found[name] = Path(next(iter(spec.submodule_search_locations))).resolve()
    return found


def _ignore(_dir: str, names: list[str]) -> list[str]:
    return [n for n in names if n in _SKIP_DIRS or n.endswith(_SKIP_SUFFIXES)]


def _files(src: Path) -> list[Path]:
    out = []
    for root, dirs, names in os.walk(src):
        dirs[:] = sorted(set(dirs) - set(_ignore(root, dirs)))
        out += [Path(root) / n for n in sorted(set(names) - set(_ignore(root, names)))]
    return out


def content_hash(packages: Mapping[str, Path]) -> str:
    """Hash of the import names, relative paths and bytes of every file (not mtimes: a touch changes nothing)."""
    h = hashlib.sha256()
    for name in sorted(packages):
        src = Path(packages[name])
        for f in _files(src):
            h.update(f"{name}/{f.relative_to(src).as_posix()}\0".encode())
            h.update(f.read_bytes())
            h.update(b"\0")
    return h.hexdigest()[:16]


def take(job_dir: Path, packages: Mapping[str, Path] | None = None) -> Path:
    """Copy the packages (default: the project's) to <job_dir>/code/<hash>/ and return that folder."""
    packages = project_packages() if packages is None else packages
    dest = Path(job_dir).absolute() / "code" / content_hash(packages)
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # copy next to the destination, then rename: a concurrent submitter never sees half a snapshot
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
    for name, src in packages.items():
        shutil.copytree(src, tmp / name, ignore=_ignore)
    _apply_umask(tmp)
    try:
        tmp.rename(dest)
    except OSError:  # someone else made the same snapshot first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _apply_umask(folder: Path) -> None:
    """Permissions as the user's umask gives new files, never world-writable: mkdtemp makes 0700 and copytree
    copies the sources' modes (a checkout may be group- or world-writable)."""
    mask = current_umask() | 0o002
    for path in [folder, *folder.rglob("*")]:
        full = 0o777 if path.is_dir() or path.stat().st_mode & 0o111 else 0o666
        os.chmod(path, full & ~mask)


def setup_lines(code_dir: Path) -> list[str]:
    """Shell lines that make a job import from the snapshot (submitit's `setup` parameter)."""
    return [
        f"export PYTHONPATH={_quote(code_dir)}${{PYTHONPATH:+:$PYTHONPATH}}",
        "export PYTHONSAFEPATH=1",
        f"export GEMCTL_CODE={_quote(code_dir)}",
    ]


def _quote(p: Path) -> str:
    return shlex.quote(str(p))
