"""Atomic writes: a reader (or a crash) never sees half a file or half a checkpoint."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600: give the file the permissions open() would
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def never_world_writable() -> None:
    """Add "others may not write" to this process's umask (inherited by the jobs it starts): on a shared cluster
    nothing gemctl creates (code snapshots, job folders, checkpoints) may be changed by other users, whatever the
    user's umask allows; the rest of the umask is kept as the user set it."""
    os.umask(current_umask() | 0o002)


FULL_BELOW_BYTES = 4 << 20  # a filesystem with less free space than this after a failed write was full


def as_disk_full(err: BaseException, path: Path) -> BaseException:
    """`err` as OSError(ENOSPC) naming `path` when the write failed because its filesystem is full, else `err`.
    Libraries say "no space" in their own ways (torch.save: "unexpected pos 576 vs 534"; safetensors: an I/O error
    text), so the filesystem's free space after the failure decides. Call it before removing what was written."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return err
    if not isinstance(err, Exception):
        return err  # KeyboardInterrupt, SystemExit: never a full disk
    try:
        free = shutil.disk_usage(path if path.exists() else path.parent).free
    except OSError:
        return err
    if free >= FULL_BELOW_BYTES:
        return err
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    full.__cause__ = err
    return full


@contextlib.contextmanager
def removed_on_failure(folder: Path) -> Iterator[None]:
    """Remove `folder` (being filled) when the body fails, at once: it frees the space a full disk needs; a failure
    that filled the disk is raised as OSError(ENOSPC) naming the folder (as_disk_full)."""
    try:
        yield
    except BaseException as err:
        reported = as_disk_full(err, folder)
        shutil.rmtree(folder, ignore_errors=True)
        if reported is not err:
            raise reported from err
        raise


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a hidden sibling folder to fill; on success it replaces `path` whole (renames, atomic on one
    filesystem), on error it is removed and `path` stays as it was. A killed writer cannot clean up after itself:
    the next writer of the same path removes its leftovers (same host, process gone)."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    staging = _sibling(path, "staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    with removed_on_failure(staging):
        yield staging
    if not path.exists():
        os.replace(staging, path)
        return
    previous = _sibling(path, "previous")
    shutil.rmtree(previous, ignore_errors=True)
    os.replace(path, previous)
    os.replace(staging, path)
    shutil.rmtree(previous, ignore_errors=True)


def _sibling(path: Path, role: str) -> Path:
    # host and pid in the name: writers on other cluster nodes sharing the filesystem are never mistaken for ours
    return path.with_name(f".{path.name}.{role}-{socket.gethostname()}-{os.getpid()}")


def _remove_leftovers(path: Path) -> None:
    host = socket.gethostname()
    for old in path.parent.glob(f".{path.name}.*-{host}-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
