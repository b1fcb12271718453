"""The data stage: `prepare_dataset(cfg, out_dir)` builds a dataset directory, all or nothing.

Everything is written into a hidden sibling directory that replaces out_dir only once complete, so a failure
(bad input, full disk, an exception) leaves out_dir as it was before: absent, or the previous complete dataset.
A killed run cannot clean up after itself; the next run removes its leftovers (same host, process gone).
"""

import os
import shutil
import socket
from pathlib import Path

from .config import DataConfig, check_config
from .manifest import write_manifest


def prepare_dataset(cfg: DataConfig, out_dir: Path) -> dict:
    """Generate (synth) or validate and index (files) the data; write out_dir/dataset.json; return that manifest."""
    check_config(cfg)
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out_dir)
    staging = _sibling(out_dir, "staging")
    staging.mkdir()
    try:
        if cfg.source == "synth":
            from .synth_dataset import write_synth

            manifest = write_synth(cfg, staging)
        else:
            from .files_source import ingest_files

            manifest = ingest_files(cfg, staging)
        write_manifest(staging, manifest)
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _sibling(out_dir: Path, role: str, pid: int | None = None) -> Path:
    # host and pid in the name: runs on other cluster nodes sharing the filesystem are never mistaken for ours
    return out_dir.with_name(f".{out_dir.name}.{role}-{socket.gethostname()}-{pid or os.getpid()}")


def _remove_leftovers(out_dir: Path) -> None:
    prefix = f".{out_dir.name}."
    host = socket.gethostname()
    for path in out_dir.parent.glob(f"{prefix}*-{host}-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _publish(staging: Path, out_dir: Path) -> None:
    """Swap the finished directory in with renames (atomic on one filesystem); drop the previous dataset."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    previous = _sibling(out_dir, "previous")
    shutil.rmtree(previous, ignore_errors=True)
    os.replace(out_dir, previous)
    os.replace(staging, out_dir)
    if previous.is_dir():
        shutil.rmtree(previous)
    else:
        previous.unlink()
