"""The Ray cluster a study runs on: the checks that turn a cluster that cannot
serve the study into one line naming the node, URI or resource and the fix, before any trial starts
(connecting to it: :mod:`study.connection`).

* ``check_storage``: every alive node writes, reads and deletes a probe at the trials' storage.
* ``check_trials_fit``: some node holds one trial's resources, or the autoscaler launches one.

Ray itself reports a wrong token as a plain connection failure, a storage without credentials as a
trial's traceback after its first checkpoint, and a trial no node can hold as a warning repeated
every minute while the study waits forever: hence these checks.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid

import ray

__all__ = ["ClusterError", "check_storage", "check_trials_fit", "storage_error", "node_name", "AUTOSCALER_WAIT_S"]

# How long the autoscaler gets to start launching a node for a trial no alive node can hold
AUTOSCALER_WAIT_S = 60.0


class ClusterError(ValueError):
    """The Ray cluster cannot serve the study as asked; the message names the node, URI or resource and the fix."""


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
        # each node's probe is named by its whole id: ids can share a prefix (Ray's fake autoscaling
        # provider numbers them fff...f01, fff...f02), and two nodes on one file system must not delete
        # each other's probe
        answers = ray.get(
            [
                probe_on_node.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                ).remote(storage, f"{probe}-{node['NodeID']}", probe)
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
