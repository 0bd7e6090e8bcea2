"""The zygote: a fresh interpreter that has imported clusterd, pyzmq and the worker's code, and forks
workers on request, so a replacement serves in milliseconds instead of an interpreter's start-up.

It never creates a ZeroMQ context or socket, so its children start as clean as fresh interpreters.
One zygote serves one generation of code: a rolling reload starts a new one, which imports the new
code. It is the parent of its workers: it reaps them and reports each exit status to the master.

Protocol on the Unix socket it inherits (its fd number is the last argument; JSON lines; a spawn
request carries one file descriptor, the write end of the worker's output pipe, as SCM_RIGHTS):
    master -> zygote   {"spawn": id, "env": {...}}        fork a worker with this environment
                       {"retire": true}                    exit once the last child is gone
    zygote -> master   {"ready": true} | {"error": "...", "traceback": "..."}   after importing
                       {"spawned": id, "pid": n}
                       {"exited": n, "status": returncode}  (negative: killed by that signal)
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys
import traceback


def _send(sock: socket.socket, obj: dict) -> None:
    sock.sendall(json.dumps(obj).encode() + b"\n")


def main() -> None:
    from ..proctitle import set_title
    from .process import _die_with_parent, ignore_group_signals
    ignore_group_signals()  # its workers, forked with these dispositions, are the master's to stop
    worker_path = sys.argv[2]
    name = sys.argv[1].split(":")[1] if sys.argv[1].count(":") >= 2 else "?"
    set_title(f"clusterd: {name} zygote gen {sys.argv[4] if len(sys.argv) > 4 else '?'}")
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:
        os._exit(3)
    sock = socket.socket(fileno=int(sys.argv[3]))
    sys.path.insert(0, os.getcwd())
    from .user_frames import user_traceback
    try:
        from . import process
        process.import_class(worker_path)
        import asyncio  # noqa: F401  (imported once here rather than in every worker)

        import zmq  # noqa: F401
    except BaseException as exc:  # the new code does not import: the master falls back and reports it
        _send(sock, {"error": f"{type(exc).__name__}: {exc}", "traceback": user_traceback(exc)})
        os._exit(1)
    _send(sock, {"ready": True})
    _serve(sock)


def _serve(sock: socket.socket) -> None:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    children: set[int] = set()
    retiring = False
    buf = b""
    while True:
        for key, _ in sel.select():
            if key.fileobj is sock:
                try:
                    data, fds, _flags, _addr = socket.recv_fds(sock, 65536, 4)
                except OSError:
                    data, fds = b"", []
                if not data:
                    os._exit(0)  # the master is gone
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    msg = json.loads(line)
                    if "spawn" in msg:
                        out = fds.pop(0) if fds else None
                        link = fds.pop(0) if fds else None  # the worker's end of its link to the master
                        pid = _fork_worker(sock, msg["env"], out, wake_r, wake_w, link)
                        for fd in (out, link):
                            if fd is not None:
                                os.close(fd)
                        children.add(pid)
                        _send(sock, {"spawned": msg["spawn"], "pid": pid})
                    elif msg.get("retire"):
                        retiring = True
                for fd in fds:
                    os.close(fd)
            else:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
                while children:
                    try:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    children.discard(pid)
                    _send(sock, {"exited": pid, "status": os.waitstatus_to_exitcode(status)})
        if retiring and not children:
            os._exit(0)


def _fork_worker(sock: socket.socket, env: dict, out: int | None, wake_r: int, wake_w: int,
                 link: int | None = None) -> int:
    pid = os.fork()
    if pid:
        return pid
    # the child: becomes a worker, as if started fresh with this environment
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sock.close()
        os.close(wake_r)
        os.close(wake_w)
        if out is not None:
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.close(out)
        os.environ.clear()
        os.environ.update(env)
        from ..wire import WorkerSpec
        spec = WorkerSpec.from_env(env)
        spec.parent_pid = os.getppid()
        if link is not None:
            spec.link_fd = link  # its number here, not in the master
        spec.to_env(os.environ)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        from .process import main as worker_main
        worker_main()
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(1)


if __name__ == "__main__":
    main()
