"""`--user` / `--group`: workers run as an unprivileged user when the master is started as root.

The master keeps root (it may bind ports below 1024 and owns the runtime directory); only the worker
processes (and their zygote) are started as the user. So that they can reach the worker link, the
instance directory is opened for traversal to that group (0710) and its parent to others (0711,
never writable), and workers.sock is handed to the user; control.sock stays root's.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path


class PrivilegeError(ValueError):
    """A --user/--group that cannot be used: one line for the user (exit status 2)."""


@dataclass(frozen=True)
class WorkerIdentity:
    uid: int
    gid: int
    user: str
    home: str

    def popen_kwargs(self) -> dict:
        """What subprocess.Popen needs to start a process as this identity."""
        return {"user": self.uid, "group": self.gid, "extra_groups": _groups_of(self.user, self.gid)}

    def environ(self, env: dict) -> dict:
        """The worker's environment: USER, LOGNAME and HOME of the user it runs as."""
        return {**env, "USER": self.user, "LOGNAME": self.user, "HOME": self.home}


def _groups_of(user: str, gid: int) -> list[int]:
    return sorted({g.gr_gid for g in grp.getgrall() if user in g.gr_mem} - {gid})


def resolve(user: str | None, group: str | None) -> WorkerIdentity | None:
    """The identity --user/--group name (names or numbers); None when neither is given."""
    if user is None and group is None:
        return None
    if os.geteuid() != 0:
        raise PrivilegeError(f"--user/--group need the master to start as root (it runs as uid {os.geteuid()}); "
                             "without root, run clusterd as the user you want")
    try:
        pw = pwd.getpwnam(user) if user is not None and not user.isdigit() else \
            pwd.getpwuid(int(user)) if user is not None else None
    except KeyError:
        raise PrivilegeError(f"--user {user}: no such user") from None
    try:
        gid = (grp.getgrnam(group).gr_gid if not group.isdigit() else int(group)) if group is not None \
            else pw.pw_gid if pw is not None else 0
    except KeyError:
        raise PrivilegeError(f"--group {group}: no such group") from None
    if pw is None:
        return WorkerIdentity(0, gid, "root", "/root")
    return WorkerIdentity(pw.pw_uid, gid, pw.pw_name, pw.pw_dir)


def open_worker_link(instance_dir: Path, identity: WorkerIdentity) -> None:
    """Let workers running as identity reach workers.sock, and nothing else of the instance."""
    root = instance_dir.parent
    mode = stat.S_IMODE(os.stat(root).st_mode)
    os.chmod(root, mode | stat.S_IXOTH | stat.S_IXGRP)          # traverse only: never list, never write
    os.chown(instance_dir, -1, identity.gid)
    os.chmod(instance_dir, 0o710)
    os.chown(instance_dir / "workers.sock", identity.uid, identity.gid)
