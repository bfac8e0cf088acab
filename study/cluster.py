"""The Ray cluster a study runs on: connecting to it, and the checks that turn a cluster that cannot
serve the study into one line naming the node, URI or resource and the fix, before any trial starts.

* ``ray_session``: Ray for the length of a block, with Ray's token authentication as Ray sets it.
* ``check_storage``: every alive node writes, reads and deletes a probe at the trials' storage.
* ``check_trials_fit``: some node holds one trial's resources, or the autoscaler launches one.

Ray itself reports a wrong token as a plain connection failure, a storage without credentials as a
trial's traceback after its first checkpoint, and a trial no node can hold as a warning repeated
every minute while the study waits forever: hence these checks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
import uuid
from contextlib import contextmanager

import ray

__all__ = ["ClusterError", "check_storage", "check_trials_fit", "ray_session"]

# How long the autoscaler gets to start launching a node for a trial no alive node can hold
AUTOSCALER_WAIT_S = 60.0


class ClusterError(ValueError):
    """The Ray cluster cannot serve the study as asked; the message names the node, URI or resource and the fix."""


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


# ---------------------------------------------------------------- storage


def _probe_storage(storage: str, probe: str, driver_probe: str | None = None) -> str | None:
    """Write, read back and delete ``probe`` under ``storage`` with the file system Tune will use
    (pyarrow's, from the URI and this process's credentials), after reading the driver's probe if
    given; None, or the failure in one line."""
    import pyarrow.fs

    try:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(storage)
        root = root.rstrip("/")
        if driver_probe and filesystem.get_file_info(f"{root}/{driver_probe}").type == pyarrow.fs.FileType.NotFound:
            return "it does not see the driver's files there, so it is not the same storage: a multi-node cluster needs s3://, gs:// or a shared file system"
        filesystem.create_dir(root, recursive=True)
        with filesystem.open_output_stream(f"{root}/{probe}") as stream:
            stream.write(b"audiofuse storage probe")
        with filesystem.open_input_stream(f"{root}/{probe}") as stream:
            stream.read()
        if not driver_probe:  # the driver's probe stays until every node has looked for it
            return None
        filesystem.delete_file(f"{root}/{probe}")
    except Exception as error:  # noqa: BLE001 - whatever the failure, it is the answer, in one line
        return _one_line(error)
    return None


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _alive_nodes() -> list[dict]:
    return [node for node in ray.nodes() if node.get("Alive")]


def check_storage(storage: str) -> None:
    """This driver and every alive node can write checkpoints to ``storage``, and see each other's:
    raises ClusterError naming the first that cannot, the URI and the fix.

    Nodes the autoscaler starts later are probed by their trials: a trial whose node cannot write its
    checkpoint fails with the same one-line message (``study.run.trainable`` wraps the upload).
    """
    import pyarrow.fs
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = f".audiofuse-probe-{uuid.uuid4().hex[:12]}"
    filesystem, root = pyarrow.fs.FileSystem.from_uri(storage)
    root = root.rstrip("/")
    try:
        created = filesystem.get_file_info(root).type == pyarrow.fs.FileType.NotFound
    except OSError as error:  # no credentials, access denied, no endpoint: the same one line as a failed write
        raise ClusterError(storage_error(storage, "this driver", _one_line(error))) from None
    try:
        failure = _probe_storage(storage, probe)
        if failure:
            raise ClusterError(storage_error(storage, "this driver", failure))
        probe_on_node = ray.remote(num_cpus=0)(_probe_storage)
        nodes = _alive_nodes()
        answers = ray.get(
            [
                probe_on_node.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                ).remote(storage, f"{probe}-{node['NodeID'][:8]}", probe)
                for node in nodes
            ]
        )
    finally:
        _remove_probe(filesystem, root, probe, created)
    for node, failure in zip(nodes, answers):
        if failure:
            raise ClusterError(storage_error(storage, f"node {node_name(node)}", failure))


def _remove_probe(filesystem, root: str, probe: str, created: bool) -> None:
    """Delete the driver's probe, and the folder the probe created if it stayed empty: a study
    refused later (by its features, say) leaves its output folder as it found it."""
    import pyarrow.fs

    with contextlib.suppress(OSError):  # a storage this driver cannot reach: the refusal already says so
        if filesystem.get_file_info(f"{root}/{probe}").type != pyarrow.fs.FileType.NotFound:
            filesystem.delete_file(f"{root}/{probe}")
        if created and isinstance(filesystem, pyarrow.fs.LocalFileSystem):
            if not filesystem.get_file_info(pyarrow.fs.FileSelector(root)):
                filesystem.delete_dir(root)


def storage_error(storage: str, where: str, failure: str) -> str:
    """The one line for a storage ``where`` cannot write checkpoints to."""
    return (
        f"{where} cannot write the trials' checkpoints to {storage} ({failure}): give it credentials for that "
        "storage (on AWS the instance profile in cluster.yaml; elsewhere AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, with AWS_ENDPOINT_URL for an S3-compatible server), check that it reaches the "
        "endpoint, or pass another --storage"
    )


def node_name(node: dict) -> str:
    return f"{node.get('NodeManagerAddress', '?')} ({node['NodeID'][:8]})"


# ---------------------------------------------------------------- resources


def _fits(have: dict, resources: dict) -> bool:
    return have.get("CPU", 0) + 1e-9 >= resources.get("cpu", 1) and have.get("GPU", 0) + 1e-9 >= resources.get("gpu", 0)


def _autoscaler(wait_s: float = 10.0) -> str | None:
    """Which autoscaler can add nodes to the cluster: "v2" (Ray's for `ray start --autoscaling-config`,
    as `ray up` runs it), "v1", or None (a `ray.init()` or plain `ray start` cluster). Waits up to
    ``wait_s`` for a just-started v1 monitor's first report."""
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    if is_autoscaler_v2(fetch_from_server=True):
        return "v2"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        raw = _internal_kv_get("__autoscaling_status")  # ray_constants.DEBUG_AUTOSCALING_STATUS
        report = json.loads(raw).get("autoscaler_report") if raw else None
        if report is not None:
            # Ray's read-only provider (a cluster without an autoscaling config) names each node's
            # type "node_<its id>"; it never adds a node
            types = (report.get("node_type_mapping") or {}).items()
            return None if all(kind == f"node_{node}" for node, kind in types) else "v1"
        time.sleep(1)
    return None


def _autoscaler_answer(version: str) -> str | None:
    """ "launching" when the autoscaler is starting a node, "infeasible" when it found that none of its
    node types holds the requested trial (autoscaler v2 says so), else None (not decided yet)."""
    if version == "v1":
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get("__autoscaling_status")
        report = json.loads(raw).get("autoscaler_report", {}) if raw else {}
        return "launching" if report.get("pending_launches") or report.get("pending_nodes") else None
    from ray._raylet import GcsClient
    from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

    reply = GetClusterStatusReply()
    reply.ParseFromString(GcsClient(ray.get_runtime_context().gcs_address).get_cluster_status(timeout_s=10))
    state = reply.autoscaling_state
    if state.pending_instance_requests or state.pending_instances:
        return "launching"
    return "infeasible" if state.infeasible_cluster_resource_constraints else None


def _nodes_text(nodes: list[dict]) -> str:
    return "; ".join(
        f"{node_name(n)}: {n['Resources'].get('CPU', 0):g} CPU, {n['Resources'].get('GPU', 0):g} GPU" for n in nodes
    )


def check_trials_fit(resources: dict, wait_s: float = AUTOSCALER_WAIT_S) -> None:
    """Some node can hold one trial: an alive node now, or one the autoscaler starts launching once
    asked for it (``ray.autoscaler.sdk.request_resources``). Raises ClusterError with the numbers when
    there is no autoscaler, when it finds none of its node types holds a trial, or when it has
    launched nothing after ``wait_s``; Tune would only warn, every minute, and wait forever."""
    asked = f"each trial asks for {resources.get('cpu', 1):g} CPU and {resources.get('gpu', 0):g} GPU"
    fix = "lower --cpus-per-trial/--gpus-per-trial, or add nodes (or node types in cluster.yaml) that hold one trial"
    if any(_fits(node["Resources"], resources) for node in _alive_nodes()):
        return
    version = _autoscaler()
    if version is None:
        raise ClusterError(f"no node can run a trial: {asked}; the cluster has {_nodes_text(_alive_nodes())}; {fix}")
    from ray.autoscaler.sdk import request_resources

    bundle = {"CPU": resources.get("cpu", 1), **({"GPU": resources["gpu"]} if resources.get("gpu") else {})}
    request_resources(bundles=[bundle])
    answer = None
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and answer is None:
            if any(_fits(n["Resources"], resources) for n in _alive_nodes()):
                return
            answer = _autoscaler_answer(version)
            time.sleep(0 if answer else 2)
    finally:
        request_resources(bundles=[])  # Tune's own requests take over; this one must not keep a node up
    if answer == "launching":
        return
    why = "finds that none of its node types holds one" if answer else f"launched no node for one in {wait_s:g} s"
    raise ClusterError(
        f"no node can run a trial: {asked}; the cluster has {_nodes_text(_alive_nodes())}, and its autoscaler {why}; {fix}"
    )
