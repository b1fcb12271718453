"""dataset.json (the manifest) and files.md5 (md5sum-format list of data files) of a prepared dataset.

The digest is the md5 of files.md5 (for user files, followed by each set's media digest, see files_source.py): it
changes when a listed file's content or path changes, and `md5sum -c files.md5` (run inside the dataset directory)
re-verifies every listed file.
"""

import hashlib
import json
from pathlib import Path

from ..errors import InputError

MANIFEST = "dataset.json"
FILE_LIST = "files.md5"
FORMAT = "gemctl-dataset/1"


def md5_file(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_file_list(directory: Path, md5s: dict[str, str]) -> str:
    """Write files.md5 (sorted by path) into `directory`; return the digest (md5 of that file's bytes)."""
    text = "".join(f"{md5s[p]}  {p}\n" for p in sorted(md5s))
    (directory / FILE_LIST).write_text(text)
    return hashlib.md5(text.encode()).hexdigest()


def write_manifest(directory: Path, manifest: dict) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def load_manifest(dataset_dir: Path) -> dict:
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise InputError(
            f"'{dataset_dir}' has no {MANIFEST}: prepare it first (`gemctl train data --recipe <recipe>`)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"'{path}' is not valid JSON ({e.msg}): prepare the dataset again") from None
    if manifest.get("format") != FORMAT:
        raise InputError(f"'{path}' is not a {FORMAT} manifest: prepare the dataset again with this version")
    return manifest


def resolve(dataset_dir: Path, path: str) -> Path:
    """Manifest paths are relative to the dataset directory (synth) or absolute (user files)."""
    return Path(dataset_dir) / path
