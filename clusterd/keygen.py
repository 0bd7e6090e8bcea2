"""CURVE key files for the master/worker link across hosts (`clusterd keygen DIR`).

The files are ZeroMQ certificates as `zmq.auth.create_certificates` writes them, so they can be
inspected and reused with any ZeroMQ tooling. Keys are Z85 text (40 bytes), the form that the
CURVE_PUBLICKEY / CURVE_SECRETKEY / CURVE_SERVERKEY socket options accept.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

__all__ = ["KEY_FILES", "CurveKeys", "KeyFilesExist", "load_keys", "write_keys"]

KEY_FILES = ("master.key", "master.key_secret", "worker.key", "worker.key_secret")


class KeyFilesExist(FileExistsError):
    """write_keys() would overwrite key files; pass force=True to replace them."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        names = ", ".join(str(p) for p in paths)
        super().__init__(f"key files already exist: {names} (use --force to replace them)")

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class CurveKeys:
    """The keys found in a key directory; a secret is None when its file is not on this host."""

    master_public: bytes
    master_secret: bytes | None
    worker_public: bytes
    worker_secret: bytes | None

    def __repr__(self) -> str:
        # Never print secrets into logs or tracebacks.
        def shown(secret: bytes | None) -> str:
            return "None" if secret is None else "<secret>"

        return (
            f"CurveKeys(master_public={self.master_public!r}, "
            f"master_secret={shown(self.master_secret)}, "
            f"worker_public={self.worker_public!r}, worker_secret={shown(self.worker_secret)})"
        )


def write_keys(directory: str | Path, force: bool = False) -> list[Path]:
    """Create a master and a worker key pair in `directory`; return the four paths written.

    The files are written in a private temporary directory and moved into place, so a secret is
    never readable by others, not even for an instant, whatever the umask.
    """
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    targets = [directory / name for name in KEY_FILES]
    existing = [p for p in targets if p.exists() or p.is_symlink()]
    if existing and not force:
        raise KeyFilesExist(existing)
    staging = Path(tempfile.mkdtemp(prefix=".keygen-", dir=directory))
    try:
        for role in ("master", "worker"):
            zmq.auth.create_certificates(staging, role)
        for target in targets:
            staged = staging / target.name
            staged.chmod(0o600 if target.name.endswith("_secret") else 0o644)
            os.replace(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return targets


def load_keys(directory: str | Path) -> CurveKeys:
    """Read the key directory; publics are required, secrets optional (one role per host).

    A host may hold only `<role>.key_secret` without `<role>.key`: the public key is in the
    secret file too. Raises ValueError naming the file that is missing, malformed or inconsistent.
    """
    directory = Path(directory)
    master_public, master_secret = _load_role(directory, "master")
    worker_public, worker_secret = _load_role(directory, "worker")
    return CurveKeys(master_public, master_secret, worker_public, worker_secret)


def _load_role(directory: Path, role: str) -> tuple[bytes, bytes | None]:
    public_path = directory / f"{role}.key"
    secret_path = directory / f"{role}.key_secret"
    public: bytes | None = None
    secret: bytes | None = None
    if secret_path.exists():
        public, secret = _read_certificate(secret_path)
        if secret is None:
            raise ValueError(f"{secret_path}: no secret-key in this certificate file")
        if zmq.curve_public(secret) != public:
            raise ValueError(f"{secret_path}: secret-key does not match its public-key")
    if public_path.exists():
        file_public, _ = _read_certificate(public_path)
        if public is not None and file_public != public:
            raise ValueError(f"{public_path}: public key does not match {secret_path.name}")
        public = file_public
    if public is None:
        raise ValueError(f"{public_path}: key file not found (run `clusterd keygen {directory}`)")
    return public, secret


def _read_certificate(path: Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read key file ({exc.strerror or exc})") from None
    except ValueError:
        raise ValueError(f"{path}: not a ZeroMQ certificate (no public-key)") from None
    for label, key in (("public-key", public), ("secret-key", secret)):
        if key is not None and not _is_z85_key(key):
            raise ValueError(f"{path}: {label} is not a 40-character Z85 CURVE key")
    return public, secret


def _is_z85_key(key: bytes) -> bool:
    if len(key) != 40:
        return False
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError, IndexError, TypeError):
        return False
