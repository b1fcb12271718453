"""The data stage: `prepare_dataset(cfg, out_dir)` builds a dataset directory, all or nothing.

Everything is written into a hidden sibling directory that replaces out_dir only once complete, so a failure
(bad input, full disk, a kill) leaves out_dir as it was before (absent, or the previous complete dataset).
"""

import os
import shutil
from pathlib import Path

from .config import DataConfig, check_config
from .manifest import write_manifest


def prepare_dataset(cfg: DataConfig, out_dir: Path) -> dict:
    """Generate (synth) or validate and index (files) the data; write out_dir/dataset.json; return that manifest."""
    check_config(cfg)
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
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


def _publish(staging: Path, out_dir: Path) -> None:
    """Swap the finished directory in with renames (atomic on one filesystem); drop the previous dataset."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    previous = out_dir.with_name(f".{out_dir.name}.previous-{os.getpid()}")
    shutil.rmtree(previous, ignore_errors=True)
    os.replace(out_dir, previous)
    os.replace(staging, out_dir)
    if previous.is_dir():
        shutil.rmtree(previous)
    else:
        previous.unlink()
