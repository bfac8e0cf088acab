"""Connecting to Ray for the length of a block, and stopping that block on Ctrl-C or SIGTERM.

study.run, study.evaluate and the dry run's cluster query connect here; a wrong token or an empty
address is one line (:class:`study.cluster.ClusterError`), not Ray's 20-second plain connection failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from contextlib import contextmanager

import ray

from .cluster import ClusterError

__all__ = ["ray_session", "interrupted"]


@contextmanager
def ray_session(address: str | None, *, log_to_driver: bool = False):
    """Ray for the length of a block: connected here (and shut down after) unless the caller already is.

    ``address``: None for a local Ray, ``auto`` or HOST:PORT for a cluster. Ray's token
    authentication stays as Ray sets it: on by default for a local Ray (Ray 2.59 and later), and
    for a cluster whatever its nodes run with, the token coming from RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token. ``ray.shutdown`` stops a local Ray started here and
    only disconnects from a cluster. study.run, study.evaluate and the plan's cluster query all connect here.
    """
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=log_to_driver)
        except ConnectionError as error:
            raise ClusterError(_connection_refused(address, error)) from error
    # Ctrl-C and SIGTERM (which Ray's core worker would answer with a native stack dump) stop the block
    # through _stop: whoever called says in one line what was kept (study.run: how to --resume).
    _interrupted.clear()
    previous = (
        {signum: signal.signal(signum, _stop) for signum in (signal.SIGINT, signal.SIGTERM)}
        if threading.current_thread() is threading.main_thread()
        else {}
    )
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if started_here:
            ray.shutdown()


_interrupted = threading.Event()


def interrupted() -> bool:
    """Whether Ctrl-C or SIGTERM asked the running Tune experiment to stop (see :func:`ray_session`)."""
    return _interrupted.is_set()


def _stop(signum, frame):
    """Inside Tuner.fit, Tune listens on SIGUSR1 and stops at its next step after a last consistent snapshot
    of every trial (what --resume restores): a KeyboardInterrupt in the middle of its bookkeeping can leave
    a snapshot naming a checkpoint it has just rotated away. Elsewhere, or at a second signal, stop at once."""
    if callable(signal.getsignal(signal.SIGUSR1)) and not _interrupted.is_set():
        _interrupted.set()
        os.kill(os.getpid(), signal.SIGUSR1)
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _connection_refused(address: str | None, error: ConnectionError) -> str:
    """One line for a driver the cluster did not let in: a wrong token when something listens at the
    address (Ray reports both as a plain connection failure, after about 20 s), else nothing there."""
    host, _, port = (address or "").rpartition(":")
    listening = False
    if host and port.isdigit():
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=3):
            listening = True
    if listening:
        return (
            f"the Ray cluster at {address} is up but refused this driver's authentication token: use the "
            "cluster's token (`ray get-auth-token` on its head) through ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH "
            "or RAY_AUTH_TOKEN, with RAY_AUTH_MODE=token"
        )
    return f"no Ray cluster answers at {address or 'the default address'} ({error}): start it, or check --address"
