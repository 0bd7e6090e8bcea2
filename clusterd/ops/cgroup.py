"""How many CPUs this process may really use: its affinity, capped by a CFS quota.

In a container limited to 1.5 CPUs, `os.sched_getaffinity` still lists every CPU of the host, so
`--workers auto` would start 96 workers on a 96-core node and let the kernel throttle them all. The
quota lives in the cgroup filesystem (v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`),
which neither the standard library nor psutil reads; this module does, in a few small files' worth
of parsing. Every ancestor cgroup up to the mount's root caps its descendants, so the tightest quota
on the way up is the one that counts.

Anything unreadable or malformed counts as "no limit at that level": a missing quota must never
stop a master from starting, it only means `auto` falls back to the affinity.

Tests point the reader at fake trees with `CLUSTERD_CGROUP_ROOT` (a directory laid out like
`/sys/fs/cgroup`; mountinfo is then not read) and `CLUSTERD_PROC_SELF_CGROUP` (a file standing in for
`/proc/self/cgroup`). Nothing else should set them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["CpuBudget", "Mount", "Quota", "cpu_budget", "parse_mountinfo", "parse_proc_cgroup",
           "read_quota", "v1_quota", "v2_quota"]

PROC_SELF_CGROUP = "/proc/self/cgroup"
PROC_SELF_MOUNTINFO = "/proc/self/mountinfo"


@dataclass(frozen=True)
class Quota:
    """A CFS quota: `quota_us` of CPU time per `period_us`, i.e. quota/period CPUs."""

    quota_us: int
    period_us: int
    source: str          # e.g. "cgroup v2 cpu.max 150000/100000"

    @property
    def cpus(self) -> float:
        return self.quota_us / self.period_us

    @property
    def whole_cpus(self) -> int:
        """Rounded up: 1.5 CPUs of quota keep two workers busy between them."""
        return max(1, math.ceil(self.cpus))


@dataclass(frozen=True)
class CpuBudget:
    """What `--workers auto` resolves to, and why."""

    cpus: int
    source: str                  # "cgroup v2 cpu.max 150000/100000" or "affinity 2 CPUs"
    affinity: int
    quota: Quota | None

    def document(self) -> dict:
        """For the status document: where the number of workers came from."""
        return {"cpus": self.cpus, "source": self.source, "affinity_cpus": self.affinity,
                "quota_cpus": None if self.quota is None else round(self.quota.cpus, 3)}


@dataclass(frozen=True)
class Mount:
    """One cgroup hierarchy as mounted here: `root` is the cgroup shown at `point`."""

    version: int                 # 1 or 2
    root: str
    point: str


# ---------------------------------------------------------------------------- parsing
def parse_proc_cgroup(text: str) -> tuple[str | None, str | None]:
    """`/proc/self/cgroup` -> (v2 path, v1 cpu controller path); None where there is none.

    Lines are `hierarchy-id:controllers:path`; v2 is `0::/path`, and the v1 cpu controller is the
    line whose comma-separated controllers include exactly `cpu` (not `cpuset` nor `cpuacct` alone).
    """
    v2 = v1 = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def parse_mountinfo(text: str) -> tuple[Mount | None, Mount | None]:
    """`/proc/self/mountinfo` -> (the cgroup2 mount, the v1 mount carrying the cpu controller).

    A line is `id parent major:minor root point options [optional...] - fstype source superoptions`;
    the super options of a v1 mount name its controllers.
    """
    v2 = v1 = None
    for line in text.splitlines():
        fields = line.split()
        try:
            dash = fields.index("-")
            root, point = _unescape(fields[3]), _unescape(fields[4])
            fstype, superoptions = fields[dash + 1], fields[dash + 3]
        except (ValueError, IndexError):
            continue
        if fstype == "cgroup2" and v2 is None:
            v2 = Mount(2, root, point)
        elif fstype == "cgroup" and v1 is None and "cpu" in superoptions.split(","):
            v1 = Mount(1, root, point)
    return v2, v1


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (`\\040`)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


# ---------------------------------------------------------------------------- quotas
def _v2_level(directory: Path) -> Quota | None:
    """`cpu.max` is `max 100000` (no limit) or `QUOTA PERIOD` in microseconds."""
    text = _read(directory / "cpu.max")
    fields = text.split() if text else []
    if len(fields) != 2 or fields[0] == "max":
        return None
    quota, period = _int(fields[0]), _int(fields[1])
    if not quota or not period or quota < 0 or period <= 0:
        return None
    return Quota(quota, period, f"cgroup v2 cpu.max {quota}/{period}")


def _v1_level(directory: Path) -> Quota | None:
    """`cpu.cfs_quota_us` is -1 for no limit; `cpu.cfs_period_us` is the period it applies to."""
    quota = _int(_read(directory / "cpu.cfs_quota_us"))
    period = _int(_read(directory / "cpu.cfs_period_us"))
    if not quota or not period or quota < 0 or period <= 0:
        return None
    return Quota(quota, period, f"cgroup v1 cpu.cfs_quota_us/cfs_period_us {quota}/{period}")


def _tightest(leaf: Path, top: Path, level: Callable[[Path], Quota | None]) -> Quota | None:
    """The smallest quota from `leaf` up to and including `top` (ancestors cap their children)."""
    best: Quota | None = None
    directory = leaf
    while True:
        found = level(directory)
        if found is not None and (best is None or found.cpus < best.cpus):
            best = found
        if directory == top or directory.parent == directory or top not in directory.parents:
            return best
        directory = directory.parent


def _cgroup_dir(mount: Mount, path: str) -> Path:
    """Where the cgroup `path` (as /proc/self/cgroup names it) sits under `mount`.

    Without a cgroup namespace a container sees its own cgroup path (`/docker/abc...`) while its
    mount shows only that cgroup (root `/docker/abc...`): strip the mount's root. A path outside
    the mount's root cannot be reached, so the mount point itself is the best we can read.
    """
    cgroup, root = PurePosixPath(path), PurePosixPath(mount.root)
    try:
        relative = cgroup.relative_to(root)
    except ValueError:
        return Path(mount.point)
    if ".." in relative.parts:
        return Path(mount.point)
    return Path(mount.point) / relative


def v2_quota(mount: Mount, path: str) -> Quota | None:
    """The tightest `cpu.max` on the way from this process's v2 cgroup up to the mount."""
    return _tightest(_cgroup_dir(mount, path), Path(mount.point), _v2_level)


def v1_quota(mount: Mount, path: str) -> Quota | None:
    """The tightest `cpu.cfs_quota_us` on the way from this process's v1 cpu cgroup up to the mount."""
    return _tightest(_cgroup_dir(mount, path), Path(mount.point), _v1_level)


def _fake_mounts(root: Path, v1_controllers: str | None) -> tuple[Mount | None, Mount | None]:
    """The mounts of a tree laid out like /sys/fs/cgroup (CLUSTERD_CGROUP_ROOT, tests only)."""
    v2 = None
    for candidate in (root, root / "unified"):
        if (candidate / "cgroup.controllers").exists():
            v2 = Mount(2, "/", str(candidate))
            break
    v1 = None
    for name in filter(None, (v1_controllers, "cpu,cpuacct", "cpuacct,cpu", "cpu")):
        if (root / name).is_dir():
            v1 = Mount(1, "/", str(root / name))
            break
    return v2, v1


def _v1_controllers(text: str) -> str | None:
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and "cpu" in parts[1].split(","):
            return parts[1]
    return None


def read_quota() -> Quota | None:
    """The CFS quota that applies to this process, or None when there is none (or none readable).

    Both hierarchies are read: on a hybrid host the cpu controller is in one of them only, and a
    quota found in either one binds.
    """
    cgroup_text = _read(Path(os.environ.get("CLUSTERD_PROC_SELF_CGROUP") or PROC_SELF_CGROUP))
    if not cgroup_text:
        return None
    v2_path, v1_path = parse_proc_cgroup(cgroup_text)
    fake_root = os.environ.get("CLUSTERD_CGROUP_ROOT")
    if fake_root:
        v2_mount, v1_mount = _fake_mounts(Path(fake_root), _v1_controllers(cgroup_text))
    else:
        v2_mount, v1_mount = parse_mountinfo(_read(Path(PROC_SELF_MOUNTINFO)) or "")
    found = []
    if v2_path is not None and v2_mount is not None:
        found.append(v2_quota(v2_mount, v2_path))
    if v1_path is not None and v1_mount is not None:
        found.append(v1_quota(v1_mount, v1_path))
    quotas = [q for q in found if q is not None]
    return min(quotas, key=lambda q: q.cpus) if quotas else None


def affinity_cpus() -> int:
    """CPUs the scheduler lets this process run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_budget() -> CpuBudget:
    """What `--workers auto` means here: the affinity, capped by the CFS quota rounded up."""
    affinity = affinity_cpus()
    try:
        quota = read_quota()
    except Exception:  # noqa: BLE001 - an odd cgroup tree must never stop a start; auto falls back
        quota = None
    if quota is not None and quota.whole_cpus < affinity:
        return CpuBudget(quota.whole_cpus, quota.source, affinity, quota)
    return CpuBudget(affinity, f"affinity {affinity} CPU{'s' if affinity != 1 else ''}", affinity, quota)
