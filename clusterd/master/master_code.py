"""Whether the master's own code changed on disk since it started.

A rolling reload replaces the workers only: the master keeps the code it imported. When the files of
the master class changed, the reload still goes ahead, and the operator is told once, in the log
and in status (`master.master_stale`), that the master needs a restart to run the new code.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def master_files(master_cls: type) -> list[Path]:
    """The source files of the master class and of its bases, clusterd's own excepted."""
    files: list[Path] = []
    for klass in master_cls.__mro__:
        module = sys.modules.get(klass.__module__)
        name = getattr(module, "__name__", "")
        path = getattr(module, "__file__", None)
        if not path or name == "clusterd" or name.startswith("clusterd.") or klass is object:
            continue
        p = Path(path).resolve()
        if p not in files:
            files.append(p)
    return files


class MasterCode:
    """A fingerprint of the master's files, taken at start, compared when a watcher fires."""

    def __init__(self, master_cls: type) -> None:
        self.files = {p: _digest(p) for p in master_files(master_cls)}
        self.stale: list[str] = []

    def changed(self) -> list[str]:
        """The master's files that differ from what the master imported (empty when none)."""
        return [str(p) for p, digest in self.files.items() if _digest(p) != digest]

    def check(self) -> list[str] | None:
        """Newly stale files, once: None when nothing changed or it was already reported."""
        if self.stale:
            return None
        self.stale = self.changed()
        return self.stale or None
