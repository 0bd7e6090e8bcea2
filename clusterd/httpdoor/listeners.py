"""The listening sockets of the front door: made once by the master, inherited by every worker.

The master calls ``open_listener`` for each ``--http-bind`` before it starts any worker and keeps the
sockets open for its whole life, so a connection is never refused while workers restart or reload.
It passes their descriptors to each worker (``pass_fds`` when spawning, and to the zygote, which
forks workers with them). A worker turns each descriptor back into a socket with ``adopt`` and
hands it to ``HttpDoor.serve``; the kernel gives each new connection to one of the accepting workers.
"""

from __future__ import annotations

import errno
import os
import socket
import stat

DEFAULT_BACKLOG = 1024


class BindError(Exception):
    """A bind address a user gave that cannot be listened on; the message is one line for them."""


def parse_bind(text: str) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` (all IPv4 interfaces) or ``unix:/path``."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise BindError(f"{text!r}: unix: needs a path")
        return socket.AF_UNIX, path
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise BindError(f"{text!r}: expected HOST:PORT, [IPV6]:PORT or unix:/path")
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, (host[1:-1], int(port_text))
    if ":" in host:
        raise BindError(f"{text!r}: write an IPv6 address in brackets, as [::1]:{port_text}")
    return socket.AF_INET, (host or "0.0.0.0", int(port_text))


def open_listener(bind: str, backlog: int = DEFAULT_BACKLOG) -> socket.socket:
    """A listening socket for ``bind``. SO_REUSEADDR (restart while old connections linger), no
    SO_REUSEPORT (one socket, shared by inheritance, so nobody else can join the port)."""
    family, address = parse_bind(bind)
    try:
        if family == socket.AF_UNIX:
            assert isinstance(address, str)
            _remove_stale_unix_socket(address)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(address)
                sock.listen(backlog)
            except OSError:
                sock.close()
                raise
            return sock
        assert isinstance(address, tuple)
        return socket.create_server(address, family=family, backlog=backlog)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise BindError(f"cannot listen on {bind}: {reason}") from None


def _remove_stale_unix_socket(path: str) -> None:
    """A socket file left by a dead instance is removed; a live one, or any other file, is refused."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except OSError:
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))


def adopt(fd: int) -> socket.socket:
    """The worker's side: the inherited descriptor as a socket object (family read from the fd)."""
    return socket.socket(fileno=fd)
