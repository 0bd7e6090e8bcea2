"""CURVE encryption and ZAP authentication of the link to workers on other hosts.

The keys are ZeroMQ certificate files written by `clusterd keygen`; authentication is pyzmq's own
authenticator (ZAP), told to accept exactly one client key: the worker key of that directory. (Its
directory loader would also accept master.key, which a worker must not be able to pose as.)
"""

from __future__ import annotations

from collections.abc import Callable

import zmq
import zmq.utils.z85
from zmq.auth.thread import ThreadAuthenticator

from .keygen import CurveKeys, load_keys


class _OnlyWorkerKey:
    """ZAP credentials check: a peer joins only with the cluster's worker key."""

    def __init__(self, worker_public: bytes) -> None:
        # pyzmq hands the callback the client's key in Z85 text, the form of the key files
        self.allowed = worker_public if len(worker_public) == 40 else zmq.utils.z85.encode(worker_public)

    def callback(self, domain: str, key: bytes) -> bool:
        return key == self.allowed


def server_keys(directory: str) -> CurveKeys:
    keys = load_keys(directory)
    if keys.master_secret is None:
        raise ValueError(f"{directory}: master.key_secret is missing (the master needs it)")
    return keys


def start_authenticator(context: zmq.Context, keys: CurveKeys) -> ThreadAuthenticator:
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=_OnlyWorkerKey(keys.worker_public))
    return auth


def configure_server(sock: zmq.Socket, keys: CurveKeys) -> None:
    sock.curve_secretkey = keys.master_secret
    sock.curve_publickey = keys.master_public
    sock.curve_server = True


def client_configurer(info: dict) -> Callable[[zmq.Socket], None]:
    """For a worker or an agent: encrypt to the master, authenticate with the worker key."""
    keys = load_keys(info["dir"])
    if keys.worker_secret is None:
        raise ValueError(f"{info['dir']}: worker.key_secret is missing (workers need it)")

    def configure(sock: zmq.Socket) -> None:
        sock.curve_secretkey = keys.worker_secret
        sock.curve_publickey = keys.worker_public
        sock.curve_serverkey = keys.master_public

    return configure
