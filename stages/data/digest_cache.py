"""Content digests that are not recomputed for unchanged files, as DVC's state does: a small sqlite file maps a
path to what stat says of it (size, mtime, inode), a sampled hash (64 KiB at its start, middle and end) and its md5.
A file whose stat and sampled hash match its entry is not read again; any other file is read once and its entry
replaced. The sampled hash catches most rewrites that keep size and mtime (a copy with preserved times); a change
that keeps size and mtime and lies outside the sampled blocks is not caught (DVC does not catch it either).

The cache file: $GEMCTL_DIGEST_CACHE, else $XDG_CACHE_HOME/gemctl/digests.sqlite (~/.cache/gemctl/...). One per
user, shared by all projects (keys are absolute paths). A cache that cannot be opened or written (read-only home,
locked too long) only costs re-reads: digests are then computed afresh, never wrong.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

from .manifest import md5_file

SAMPLE = 1 << 16  # bytes hashed at each of the start, middle and end of a file
SCHEMA = ("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
          "inode INTEGER, sample TEXT, md5 TEXT)")


def default_cache_path() -> Path:
    if os.environ.get("GEMCTL_DIGEST_CACHE"):
        return Path(os.environ["GEMCTL_DIGEST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gemctl" / "digests.sqlite"


def sampled_hash(path: Path, size: int) -> str:
    """md5 of the size and three 64 KiB blocks (the whole file when it is smaller than three blocks)."""
    h = hashlib.md5(str(size).encode())
    with open(path, "rb") as f:
        if size <= 3 * SAMPLE:
            h.update(f.read())
        else:
            for start in (0, (size - SAMPLE) // 2, size - SAMPLE):
                f.seek(start)
                h.update(f.read(SAMPLE))
    return h.hexdigest()


class DigestCache:
    """`cache.md5(path)`: the file's md5, read only when the file changed since the cache last saw it. Use as a
    context manager (or call close()) so that new entries are written; `reads` counts the files read in full."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else default_cache_path()
        self.reads = 0
        self._pending: dict[str, tuple] = {}  # path -> (size, mtime_ns, inode, sample, md5)
        self._db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30)
            self._db.execute(SCHEMA)
        except (OSError, sqlite3.Error):
            self._db = None  # no cache: every digest is computed

    def __enter__(self) -> DigestCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def md5(self, path: Path) -> str:
        path = Path(path).absolute()
        st = path.stat()
        seen = (st.st_size, st.st_mtime_ns, st.st_ino, sampled_hash(path, st.st_size))
        row = self._lookup(str(path))
        if row is not None and row[:4] == seen:
            return row[4]
        self.reads += 1
        md5 = md5_file(path)
        self._pending[str(path)] = (*seen, md5)
        if len(self._pending) >= 10_000:
            self.flush()
        return md5

    def _lookup(self, key: str) -> tuple | None:
        if key in self._pending:  # written in this session, not flushed yet
            return self._pending[key]
        if self._db is None:
            return None
        try:
            return self._db.execute(
                "SELECT size, mtime_ns, inode, sample, md5 FROM digests WHERE path = ?", (key,)).fetchone()
        except sqlite3.Error:
            return None

    def flush(self) -> None:
        if self._db is not None and self._pending:
            rows = [(key, *entry) for key, entry in self._pending.items()]
            try:
                with self._db:
                    self._db.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?)", rows)
            except sqlite3.Error:
                pass  # a locked or read-only cache: the next run reads these files again
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        if self._db is not None:
            self._db.close()
            self._db = None
