"""The data stage: `prepare_dataset(cfg, out_dir)` builds a dataset directory, all or nothing.

Everything is written into a hidden sibling directory that replaces out_dir only once complete (files.atomic_dir),
so a failure (bad input, full disk, an exception, a kill) leaves out_dir as it was before: absent, or the previous
complete dataset.
"""

from pathlib import Path

from ..files import atomic_dir
from .config import DataConfig, check_config
from .manifest import write_manifest


def prepare_dataset(cfg: DataConfig, out_dir: Path) -> dict:
    """Generate (synth) or validate and index (files) the data; write out_dir/dataset.json; return that manifest."""
    check_config(cfg)
    with atomic_dir(Path(out_dir)) as staging:
        if cfg.source == "synth":
            from .synth_dataset import write_synth

            manifest = write_synth(cfg, staging)
        else:
            from .files_source import ingest_files

            manifest = ingest_files(cfg, staging)
        write_manifest(staging, manifest)
    return manifest
