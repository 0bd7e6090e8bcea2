"""The internal wire between the master and its workers: frame kinds, call tokens, the worker spec.

Everything the master and a worker (or an agent) say to each other that is not JSON-RPC itself is
named here, so a reader can follow a frame or a setting from one side to the other. The JSON-RPC
payloads inside the frames are the protocol module's; this module only frames them.

A worker's DEALER socket to the master's workers socket (the master's ROUTER sees the worker's
routing id, its `ident`, first). A message carries one or more items, one frame each, that name their
kind in their first byte; each side gathers the items of a loop turn for a peer into one message
(zmqloop.Outbox), since a send, not the bytes, is what a small message costs:

    master -> worker   CALL + token + request    a call to answer with the same token
                       NOTIFY + request          a notification (no answer)
                       ANSWER + response         the answer to one of the worker's own requests
                       STOP [+ seconds]          stop gracefully (finish the calls, stop_services),
                                                 within the seconds left before the master kills it
                       STATE + b"1"|b"0"         whether the instance is ready (/readyz), on change
                       FORWARDED + token + response   the answer to a FORWARD
    worker -> master   RESULT|ERROR + token + response   the answer to a call
                       REQUEST + request         the worker's own request to the master
                       FORWARD + token + request a request from an HTTP/WebSocket caller the worker
                                                 does not serve itself: the master routes it as
                                                 one from a --bind client (same exposure rules)
                       DOOR + {"served": n, ...} the HTTP/WebSocket door's figures, sent at once when
                                                 its calls reach the worker's max_requests (the beats
                                                 carry them too); the master decides the recycle

and, alone in a message of two frames (kind, json):

    worker -> master   HELLO, hello              ready, with its method table
                       FAILURE, failure          could not start: the error and traceback

The heartbeat thread has a socket of its own, with routing id HEARTBEAT_PREFIX + ident:

    worker -> master   BEAT, {"stalled": s, "stats": delta}   alive; how long the main thread made no
                                                 progress; the calls its HTTP/WS door answered since the
                                                 last beat (ops/method_stats.py, only when there were any)
    master -> worker   BEAT                      the master is alive (a worker of a dead master exits)

An agent on another host speaks on the remote workers socket as [AGENT, json] (see master/remote.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

# Frame kinds: the first byte of a worker-link message. Plain bytes (not an Enum): they are compared
# on the per-call path.
CALL = b"c"
NOTIFY = b"n"
ANSWER = b"a"
STOP = b"s"
RESULT = b"r"
ERROR = b"e"
REQUEST = b"q"
HELLO = b"h"
FAILURE = b"f"
BEAT = b"b"
AGENT = b"A"
STATE = b"t"
FORWARD = b"w"
FORWARDED = b"W"
DOOR = b"d"

# The version of what masters, agents and workers say to each other (these frames, the agent's
# messages, the worker spec). Bumped when a change is one the other side could not read: an agent
# whose hello names another version is refused with a message saying so (master/remote.py), instead
# of joining and then hanging. An agent that names none predates the check and speaks version 1.
LINK_VERSION = 1

HEARTBEAT_PREFIX = b"hb:"
TOKEN_SIZE = 8

SPEC_ENV = "_CLUSTERD_SPEC"


def token_bytes(serial: int) -> bytes:
    """The routing token of the serial-th call the master sends (a call's answer carries it back)."""
    return serial.to_bytes(TOKEN_SIZE, "little")


def call_frame(token: bytes, request: bytes) -> bytes:
    """The one frame of a call: kind, token, the caller's request bytes untouched."""
    return CALL + token + request


def answer_frame(token: bytes, response: bytes, error: bool) -> bytes:
    """The one frame of a worker's answer to a call."""
    return (ERROR if error else RESULT) + token + response


def split_token(head: bytes) -> tuple[bytes, bytes]:
    """(token, body) of a CALL, RESULT or ERROR frame."""
    return head[1:1 + TOKEN_SIZE], head[1 + TOKEN_SIZE:]


@dataclass
class WorkerSpec:
    """What a worker needs to know to start: travels from the master (or an agent) to the worker
    process in the SPEC_ENV environment variable, and from the master to an agent in a spawn message.

    heartbeat_interval and heartbeat_timeout come from the master's --heartbeat-interval and
    --heartbeat-timeout (config.py); the worker's heartbeat thread (worker/heartbeat.py) uses them.
    """

    worker: str                    # "package.module:Class" of the WorkerEndpoint
    ident: str                     # the worker's routing id on the master's workers socket
    slot: int
    generation: int
    name: str                      # the instance name
    heartbeat_interval: float
    heartbeat_timeout: float
    debug: bool = False
    endpoint: str = ""             # the master's workers socket address
    link_fd: int | None = None     # a local worker process's end of its link (streamlink.py), inherited
    parent_pid: int | None = None  # the process the worker must die with (master, zygote or agent)
    master_pid: int | None = None  # the master, on the worker's host: while it is paused, its silence is no death
    die_with_parent: bool = True
    curve: dict | None = None      # CURVE client settings for a worker connecting from another host
    host: str | None = None        # set by an agent: the host the worker runs on
    # The HTTP/WebSocket front door (DESIGN.md 12): the listening sockets the master made, inherited
    # at these descriptor numbers, and how to serve them (worker/http.py).
    http_fds: list[int] = dataclasses.field(default_factory=list)
    http_token_file: str | None = None
    http_cors: str | None = None
    http_status: bool = False
    dashboard: bool = False        # --dashboard: serve /dashboard on the HTTP port, relayed from the master
    max_message_size: int = 16 * 1024 * 1024
    max_batch: int = 1000
    call_timeout: float | None = None
    graceful_timeout: float = 30.0
    log_calls: bool = False        # --log-calls: one access line per call
    # --max-requests with this worker's jitter (0: none): the door reports when its calls reach it
    max_requests: int = 0

    # -- through the environment
    def to_env(self, env: MutableMapping[str, str]) -> MutableMapping[str, str]:
        env[SPEC_ENV] = json.dumps(dataclasses.asdict(self))
        return env

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] = os.environ, pop: bool = False) -> "WorkerSpec":
        raw = env.pop(SPEC_ENV) if pop else env[SPEC_ENV]
        return cls.from_dict(json.loads(raw))

    # -- through an agent's spawn message
    def for_agent(self) -> dict[str, Any]:
        """The spec an agent receives: the endpoint and parent are the agent's own, the master is elsewhere."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("endpoint", "parent_pid", "master_pid", "http_fds", "link_fd")}

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> "WorkerSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in {**data, **overrides}.items() if k in names})


__all__ = ["LINK_VERSION",
           "CALL", "NOTIFY", "ANSWER", "STOP", "RESULT", "ERROR", "REQUEST", "HELLO", "FAILURE", "BEAT", "AGENT",
           "STATE", "FORWARD", "FORWARDED", "DOOR",
           "HEARTBEAT_PREFIX", "TOKEN_SIZE", "SPEC_ENV", "WorkerSpec", "token_bytes", "call_frame", "answer_frame",
           "split_token"]
