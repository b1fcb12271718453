"""Paths from records, confined to their root: no `../` out of it, no absolute path elsewhere, no symlink out."""

import os
import stat


class Confined:
    """`Confined(root).stat(rel)` -> (the file's os.stat_result, its real path) or a reason it is refused.

    A record's path is joined to the root (an absolute one stands for itself), normalised, and its folder resolved
    (symlinks followed, once per folder); a file that is itself a symlink is resolved too. The result must lie inside
    the root's real path. Folder resolutions are cached, so millions of records cost one lstat each."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.path.realpath(root)
        self._prefix = self.root.rstrip(os.sep) + os.sep
        self._dirs: dict[str, str | None] = {}  # folder as written -> its real path (None: outside the root)

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self._prefix)

    def path(self, rel: str) -> str | None:
        """The absolute path of `rel` with its folder resolved, or None when it leaves the root."""
        full = os.path.normpath(os.path.join(self.root, rel))
        folder, name = os.path.split(full)
        real = self._dirs.get(folder, "")
        if real == "":
            real = os.path.realpath(folder)
            real = self._dirs[folder] = real if self._inside(real) else None
        return None if real is None or not name else os.path.join(real, name)

    def stat(self, rel: str) -> tuple[os.stat_result, str] | str:
        """(the file's stat, its path with the folder resolved), or why it is refused: "outside", "missing" or
        "not a file"."""
        if "\0" in rel:  # no file has such a name (and os calls refuse it)
            return "missing"
        full = self.path(rel)
        if full is None:
            return "outside"
        try:
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                if not self._inside(os.path.realpath(full)):
                    return "outside"
                st = os.stat(full)
        except (OSError, ValueError):  # absent, a file in the way, no permission, a NUL in the name
            return "missing"
        return (st, full) if stat.S_ISREG(st.st_mode) else "not a file"
