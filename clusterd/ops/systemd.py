"""systemd integration: the sd_notify protocol and service units.

The notify side is a few datagrams on an AF_UNIX socket, so it is written here with the standard
library instead of depending on libsystemd. Every send is best effort: a supervisor must never fail
or stall because systemd is gone or its socket is full.
"""

from __future__ import annotations

import math
import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from importlib import resources

from ..settings import ConfigError, default, parse_seconds

__all__ = [
    "CHILD_DROPPED_VARS",
    "TEMPLATE_UNIT_PATH",
    "Notifier",
    "child_environ",
    "quote_exec_arg",
    "render_unit",
    "template_unit",
]

# Variables that address the service manager: a worker that inherited them could send READY=1 or
# WATCHDOG=1 for the whole service, or adopt sockets meant for the master.
CHILD_DROPPED_VARS = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)

TEMPLATE_UNIT_PATH = resources.files("clusterd") / "data" / "clusterd@.service"

DEFAULT_GRACEFUL_TIMEOUT: float = default("graceful-timeout")
# Time systemd grants beyond --graceful-timeout before SIGKILL: the master first waits for the
# workers, then runs its own stop_services, and needs a moment to reap and unlink shared memory.
STOP_TIMEOUT_MARGIN = 15.0
WATCHDOG_SEC = 30


class Notifier:
    """Sends sd_notify messages; does nothing when not started by systemd with Type=notify."""

    def __init__(
        self,
        address: str | None,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
    ) -> None:
        self._address = _socket_address(address) if address else None
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._sock: socket.socket | None = None
        if self._address is not None:
            try:
                self._sock = socket.socket(
                    socket.AF_UNIX,
                    socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
                )
            except OSError:
                self._address = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """Build from NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID as systemd passes them."""
        return cls(
            environ.get("NOTIFY_SOCKET") or None,
            watchdog_usec=_positive_int(environ.get("WATCHDOG_USEC")),
            watchdog_pid=_positive_int(environ.get("WATCHDOG_PID")),
        )

    @property
    def enabled(self) -> bool:
        """True when messages actually go to a service manager."""
        return self._sock is not None

    def notify(self, *lines: str) -> None:
        """Send one datagram of KEY=VALUE lines; never blocks, never raises."""
        if self._sock is None or self._address is None or not lines:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError:
            # Socket full (EAGAIN), manager gone or restarting: the next message will do.
            pass

    def ready(self) -> None:
        """All workers are ready (start-up or end of a reload)."""
        self.notify("READY=1")

    def status(self, text: str) -> None:
        """One-line summary shown by `systemctl status`."""
        self.notify("STATUS=" + " ".join(text.splitlines()))

    def reloading(self) -> None:
        """A reload began; systemd wants the monotonic timestamp in the same datagram."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        """A graceful stop began."""
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        """Keep-alive; send every watchdog_interval() seconds while healthy."""
        self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog() calls (half of WATCHDOG_USEC), or None when not asked for."""
        if self._sock is None or self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2_000_000

    def close(self) -> None:
        """Release the socket; later calls do nothing."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __repr__(self) -> str:
        return f"Notifier(address={self._address!r}, enabled={self.enabled})"


def child_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment for a worker, without the variables that talk to systemd."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if k not in CHILD_DROPPED_VARS}


def template_unit() -> str:
    """The text of the clusterd@.service template shipped in the package."""
    return TEMPLATE_UNIT_PATH.read_text(encoding="utf-8")


def render_unit(
    master: str,
    worker: str,
    *,
    name: str,
    workdir: str,
    executable: str,
    executable_args: Sequence[str] = (),
    args: Sequence[str] = (),
    user: str | None = None,
    environment_file: str | None = None,
    graceful_timeout: float | None = None,
    read_write_paths: Sequence[str] = (),
) -> str:
    """A ready-to-install service unit running `clusterd run MASTER WORKER` for one app.

    `executable_args` come right after the executable (`-m clusterd` when it is an interpreter);
    `args` are further `run` options, passed through verbatim. TimeoutStopSec follows
    `graceful_timeout`, or the --graceful-timeout found in `args`, or the default of 30 s.
    """
    _check_unit_inputs(name=name, workdir=workdir, executable=executable, user=user,
                       read_write_paths=read_write_paths)
    if graceful_timeout is None:
        graceful_timeout = _graceful_timeout_from_args(args)
    exe = " ".join([quote_exec_arg(executable, executable=True), *map(quote_exec_arg, executable_args)])
    start = " ".join(
        [exe, "run", quote_exec_arg(master), quote_exec_arg(worker), "--name", quote_exec_arg(name)]
        + [quote_exec_arg(a) for a in args]
    )
    service = [
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={start}",
        f"ExecReload={exe} reload --name {quote_exec_arg(name)}",
        f"WorkingDirectory={_escape_path(workdir)}",
    ]
    if user is not None:
        service.append(f"User={user}")
    if environment_file is not None:
        service.append(f"EnvironmentFile={_escape_path(environment_file)}")
    service += _service_policy(name, graceful_timeout)
    if read_write_paths:
        service.append("ReadWritePaths=" + " ".join(_quote_word(_escape(p)) for p in read_write_paths))
    description = " ".join(f"clusterd {name} ({master} / {worker})".splitlines())
    return "\n".join(
        [
            f"# Generated by `clusterd systemd-unit`; install as /etc/systemd/system/{name}.service",
            "[Unit]",
            f"Description={_escape(description)}",
            "After=network-online.target",
            "Wants=network-online.target",
            "StartLimitIntervalSec=60",
            "StartLimitBurst=5",
            "",
            "[Service]",
            *service,
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


def _check_unit_inputs(*, name: str, workdir: str, executable: str, user: str | None,
                       read_write_paths: Sequence[str]) -> None:
    """ValueError for what would make a broken or unsafe unit."""
    for label, value in (("workdir", workdir), ("executable", executable)):
        if not os.path.isabs(value):
            raise ValueError(f"{label} must be an absolute path, got {value!r}")
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a usable instance name for a unit: {name!r}")
    if user is not None and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.@-]*\$?", user):
        raise ValueError(f"not a valid user name for a unit: {user!r}")
    for path in read_write_paths:
        if not os.path.isabs(path):
            raise ValueError(f"read-write path must be absolute, got {path!r}")


def _service_policy(name: str, graceful_timeout: float) -> list[str]:
    """Runtime directory, stop, restart, watchdog and hardening lines of [Service]."""
    return [
        f"RuntimeDirectory=clusterd/{name}",
        "RuntimeDirectoryMode=0700",
        'Environment="CLUSTERD_RUNTIME_DIR=%t/clusterd"',
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={math.ceil(graceful_timeout + STOP_TIMEOUT_MARGIN)}",
        "Restart=on-failure",
        "RestartSec=1",
        "RestartPreventExitStatus=2",
        f"WatchdogSec={WATCHDOG_SEC}",
        *_HARDENING,
    ]


# Hardening that leaves what clusterd needs: AF_UNIX/INET sockets, /proc for psutil, /dev/shm for
# shared memory (PrivateDevices= bind-mounts the host /dev/shm, ProtectSystem= leaves /dev
# writable), fresh interpreters for workers (no MemoryDenyWriteExecute=: it breaks ctypes/cffi
# callbacks), and no RemoveIPC=/DynamicUser=, which would delete shared memory behind our back.
_HARDENING = (
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=read-only",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "RestrictRealtime=yes",
    "RestrictNamespaces=yes",
    # AF_NETLINK: getifaddrs(), which ZeroMQ uses for binds on an interface name (tcp://eth0:7100).
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallErrorNumber=EPERM",
    "PrivateMounts=yes",
    # Root keeps only the power to bind ports below 1024; a User= service has no capabilities anyway.
    "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
    "UMask=0027",
)

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]*")
_SAFE_WORD = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


def quote_exec_arg(arg: str, *, executable: bool = False) -> str:
    """Quote one argument for an Exec*= line so systemd passes it through unchanged.

    `%` (specifiers) and `$` (variable expansion) are doubled; anything outside a safe set is put
    in double quotes with C escapes, which systemd undoes after splitting. The executable path
    gets no variable expansion, so its `$` stays single.
    """
    escaped = _escape(arg) if executable else _escape(arg).replace("$", "$$")
    if _SAFE_WORD.fullmatch(arg):
        return escaped
    return _quote_word(escaped)


def _quote_word(text: str) -> str:
    out = []
    for ch in text:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _escape(text: str) -> str:
    """Double `%` so systemd does not read it as a specifier."""
    return text.replace("%", "%%")


def _escape_path(path: str) -> str:
    if any(ch in path for ch in "\n\r\0"):
        raise ValueError(f"path contains a control character: {path!r}")
    return _escape(path)


def _socket_address(address: str) -> str | None:
    if address.startswith("@"):
        return "\0" + address[1:]  # abstract namespace
    if address.startswith("/"):
        return address
    return None  # vsock: and other transports are not supported


def _positive_int(value: str | None) -> int | None:
    try:
        number = int(value) if value else None
    except ValueError:
        return None
    return number if number and number > 0 else None


def _graceful_timeout_from_args(args: Sequence[str]) -> float:
    for i, arg in enumerate(args):
        value: str | None = None
        if arg == "--graceful-timeout" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--graceful-timeout="):
            value = arg.partition("=")[2]
        if value is not None:
            try:
                return parse_seconds(value)
            except ConfigError:
                break
    return DEFAULT_GRACEFUL_TIMEOUT
