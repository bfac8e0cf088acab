"""The study on Ray Tune: a multi-node cluster on loopback, a killed worker, a killed driver,
--resume and --extend, and the cluster launcher config."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from conftest import free_port, ray_processes_under, stop_ray_started_under

from study.cluster import AUTOSCALER_WAIT_S, ClusterError
from study.config import SpaceError, load_space
from study.run import run_study

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
# The fault tests stop a trial after its third epoch checkpoint: enough epochs after it that the
# trial is still training when the fault lands (with smoke's 3 epochs it could finish first on a
# loaded machine, and nothing was left to retry).
LONGER = {"train.max_epochs": 12, "train.patience": 12}
# A checkpoint folder appears on disk before the driver has registered it; a fault right after the
# first one can land before that, and Tune then restarts the trial from scratch (no retry counted,
# as CI saw). The fault waits for the third checkpoint, two epochs later, with nine still to come.
REGISTERED_CHECKPOINT = "run-1/trial_*/checkpoint_000002"


def _space_file(tmp_path: Path, seeds: list[int], architectures=("waveform", "fusion")) -> Path:
    raw = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    raw["grid"] = {"model.architecture": list(architectures), "seed": seeds}
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _ray_processes() -> list[psutil.Process]:
    """This test session's Ray processes (its RAY_TMPDIR): other users' Ray instances are not ours to judge."""
    return ray_processes_under(os.environ["RAY_TMPDIR"])


@pytest.fixture(scope="module")
def reference(synth_root, tmp_path_factory):
    """The smoke study, undisturbed, on a two-node Ray cluster on loopback."""
    import ray
    from ray.cluster_utils import Cluster

    already_running = {p.pid for p in _ray_processes()}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    out = tmp_path_factory.mktemp("reference")
    try:
        ray.init(address=cluster.address)
        run_study(load_space("smoke"), out=out, data_root=synth_root, overrides=LONGER, report=False, verbose=0)
    finally:
        ray.shutdown()
        cluster.shutdown()
    time.sleep(1)
    (out / "leftover_ray_processes.txt").write_text(
        "\n".join(str(p.pid) for p in _ray_processes() if p.pid not in already_running)
    )
    return out


def test_two_node_cluster_runs_every_trial_on_both_nodes(reference):
    trials = pd.read_parquet(reference / "trials.parquet")
    assert len(trials) == 4
    assert trials["node_id"].nunique() == 2
    for column in (
        "trial_id",
        "config/model.architecture",
        "config/seed",
        "physionet2016:test/roc_auc",
        "pascal/roc_auc",
        "epochs",
        "wall_time_s",
        "node_ip",
    ):
        assert column in trials
    predictions = pd.read_parquet(reference / "predictions.parquet")
    assert set(predictions["trial_id"]) == set(trials["trial_id"])
    study = json.loads((reference / "study.json").read_text())
    for key in ("space", "code", "packages", "data_fingerprints", "started", "finished", "experiments"):
        assert key in study
    assert (reference / "leftover_ray_processes.txt").read_text() == ""  # the test cluster left nothing behind


def test_resume_after_finish_trains_nothing(reference, synth_root, capsys):
    before = pd.read_parquet(reference / "trials.parquet")
    summary = run_study(
        load_space("smoke"), out=reference, data_root=synth_root, overrides=LONGER, resume=True, report=False, verbose=0
    )
    assert summary["trained"] == 0
    pd.testing.assert_frame_equal(before, pd.read_parquet(reference / "trials.parquet"))


def _storage_files(storage: str, pattern: str) -> list[str]:
    """The files of a Tune storage (a folder or an s3:// URI) matching ``pattern``, relative to it."""
    import pyarrow.fs

    filesystem, root = pyarrow.fs.FileSystem.from_uri(storage)
    try:
        found = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    except FileNotFoundError:
        return []
    names = [info.path[len(root) :].lstrip("/") for info in found if info.type == pyarrow.fs.FileType.File]
    return [name for name in names if fnmatch.fnmatch(name, pattern)]


def _storage_text(storage: str, name: str) -> str:
    import pyarrow.fs

    filesystem, root = pyarrow.fs.FileSystem.from_uri(storage)
    with filesystem.open_input_stream(f"{root.rstrip('/')}/{name}") as stream:
        return stream.read().decode()


def _kill_one_trial_worker(storage: str, stop: threading.Event, killed: list) -> None:
    """Once the (only) running trial's third epoch checkpoint is in ``storage``, SIGKILL its worker process."""
    while not stop.is_set():
        if _storage_files(storage, f"{REGISTERED_CHECKPOINT}/*"):
            for proc in psutil.process_iter(["cmdline", "pid"]):
                cmd = " ".join(proc.info["cmdline"] or [])
                if cmd.startswith("ray::ImplicitFunc") and "train" in cmd:
                    proc.kill()
                    killed.append(proc.info["pid"])
                    return
        time.sleep(0.05)


def _run_one_trial_at_a_time(out: Path, synth_root: Path, storage: str | None = None) -> dict:
    """The reference's smoke study, one trial at a time, so the trial a fault hits is the one that checkpointed."""
    return run_study(
        load_space("smoke"),
        out=out,
        data_root=synth_root,
        storage=storage,
        overrides=LONGER,
        report=False,
        verbose=0,
        max_concurrent=1,
    )


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_killed_worker_trial_is_retried_and_matches_the_undisturbed_run(
    reference, synth_root, tmp_path, storage, request
):
    """The trial resumes from its last checkpoint in the study's storage: OUT/tune, or S3 (a server on
    loopback), where it reads the checkpoint back from the bucket."""
    stop, killed = threading.Event(), []
    out = tmp_path / "killed"
    uri = request.getfixturevalue("s3_storage")["uri"] if storage == "s3" else None
    killer = threading.Thread(target=_kill_one_trial_worker, args=(uri or str(out / "tune"), stop, killed), daemon=True)
    killer.start()
    try:
        summary = _run_one_trial_at_a_time(out, synth_root, uri)
    finally:
        stop.set()
        killer.join()
    assert killed, "no trial worker was found to kill"
    assert summary["failed"] == 0
    trials = pd.read_parquet(out / "trials.parquet").set_index("trial_id")
    expected = pd.read_parquet(reference / "trials.parquet").set_index("trial_id")
    assert trials["retries"].sum() >= 1
    metric_columns = [c for c in expected.columns if "/" in c and not c.startswith("config/")]
    pd.testing.assert_frame_equal(trials.loc[expected.index, metric_columns], expected[metric_columns])
    if uri:
        assert not (out / "tune").exists()  # every checkpoint went to the bucket, none to OUT
        assert _storage_files(uri, "run-1/experiment_state-*.json")
        assert len({name.split("/")[1] for name in _storage_files(uri, "run-1/trial_*/checkpoint_*/*")}) == 4


def _remove_the_node_of_the_running_trial(cluster, workers, out: Path, stop: threading.Event, removed: list) -> None:
    """Once the (only) running trial has written an epoch checkpoint, remove the worker node running it:
    its workers, raylet and object store are killed at once, as when a machine goes away."""
    raylets = {node.all_processes["raylet"][0].process.pid: node for node in workers}
    while not stop.is_set():
        if list((out / "tune").glob(REGISTERED_CHECKPOINT)):
            for proc in psutil.process_iter(["cmdline", "pid"]):
                if not " ".join(proc.info["cmdline"] or []).startswith("ray::ImplicitFunc"):
                    continue
                raylet = next((p for p in proc.parents() if p.pid in raylets), None)
                if raylet is not None:
                    # the workers first (a worker outliving its raylet could still finish the trial), then the rest
                    for child in raylet.children(recursive=True):
                        child.kill()
                    cluster.remove_node(raylets[raylet.pid], allow_graceful=False)
                    removed.append(raylets[raylet.pid].node_id)
                    return
        time.sleep(0.02)


def test_a_lost_worker_node_is_survived_and_matches_the_undisturbed_run(reference, synth_root, tmp_path):
    """Two worker nodes (the head runs no trial and holds the driver's features); the node running
    the first trial is removed after its third epoch: the trial resumes from a checkpoint on the
    other node, reading the features from the driver's copy in the head's object store."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    out = tmp_path / "node_lost"
    stop, removed = threading.Event(), []
    remover = threading.Thread(
        target=_remove_the_node_of_the_running_trial, args=(cluster, workers, out, stop, removed), daemon=True
    )
    try:
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        remover.start()
        summary = _run_one_trial_at_a_time(out, synth_root)
    finally:
        stop.set()
        if remover.is_alive():
            remover.join()
        ray.shutdown()
        cluster.shutdown()
    assert removed, "no trial was found running on a worker node"
    survivor = next(node.node_id for node in workers if node.node_id != removed[0])
    assert summary["failed"] == 0 and summary["retried"] >= 1
    trials = pd.read_parquet(out / "trials.parquet").set_index("trial_id")
    retried = trials[trials["retries"] > 0]
    print(f"removed node {removed[0]}; retried trial(s) {list(retried.index)} finished on {list(retried['node_id'])}")
    assert (retried["node_id"] == survivor).all()  # finished on the node that was left
    expected = pd.read_parquet(reference / "trials.parquet").set_index("trial_id")
    metric_columns = [c for c in expected.columns if "/" in c and not c.startswith("config/")]
    pd.testing.assert_frame_equal(trials.loc[expected.index, metric_columns], expected[metric_columns])


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_killed_driver_resumes_without_rerunning_finished_trials(synth_root, tmp_path, storage, request):
    """--resume reads the experiment's state back from the study's storage: OUT/tune, or the S3
    bucket (the killed driver's Ray and its local staging folder are gone by then)."""
    space = _space_file(tmp_path, seeds=[0, 1, 2], architectures=("waveform",))
    out = tmp_path / "study"
    uri = request.getfixturevalue("s3_storage")["uri"] if storage == "s3" else None
    driver_ray = tempfile.mkdtemp(prefix="drv-", dir=os.environ["RAY_TMPDIR"])  # the killed driver's Ray, and no other
    env = {**os.environ, "RAY_TMPDIR": driver_ray}
    command = [
        sys.executable,
        "-m",
        "study.run",
        "--space",
        str(space),
        "--out",
        str(out),
        "--data-root",
        str(synth_root),
        "--no-report",
        "--verbose",
        "0",
        "--max-concurrent",
        "1",
        *(["--storage", uri] if uri else []),
    ]
    driver = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    finished_before: dict[str, float] = {}
    deadline = time.time() + 300
    try:
        while time.time() < deadline and not finished_before:
            for result_file in _storage_files(uri or str(out / "tune"), "run-1/*/result.json"):
                for line in _storage_text(uri or str(out / "tune"), result_file).splitlines():
                    record = json.loads(line)
                    if record.get("done") and "wall_time_s" in record:
                        finished_before[record["study_trial_id"]] = record["wall_time_s"]
            time.sleep(0.5)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert finished_before, "no trial finished before the deadline"
    time.sleep(1)
    stop_ray_started_under(driver_ray)  # the killed driver's local Ray outlives it; only that one is stopped
    shutil.rmtree(driver_ray)  # with it Tune's local staging copy of the experiment: only the storage holds it
    assert json.loads((out / "study.json").read_text())["storage"] == (uri or str(out.resolve() / "tune"))
    with pytest.raises(SpaceError, match="already holds study"):
        run_study(load_space(space), out=out, data_root=synth_root, report=False, verbose=0)
    summary = run_study(load_space(space), out=out, data_root=synth_root, resume=True, report=False, verbose=0)
    trials = pd.read_parquet(out / "trials.parquet").set_index("trial_id")
    assert len(trials) == 3 and summary["failed"] == 0
    for trial_id, wall in finished_before.items():
        assert trials.loc[trial_id, "wall_time_s"] == pytest.approx(wall)  # not trained again


def test_extend_runs_only_the_new_seed_and_merges(synth_root, tmp_path):
    space = _space_file(tmp_path, seeds=[0], architectures=("waveform",))
    out = tmp_path / "study"
    run_study(load_space(space), out=out, data_root=synth_root, report=False, verbose=0)
    first = pd.read_parquet(out / "trials.parquet")
    space = _space_file(tmp_path, seeds=[0, 1], architectures=("waveform",))
    with pytest.raises(SpaceError, match=r"grid.seed: \[0\] -> \[0, 1\]"):
        run_study(load_space(space), out=out, data_root=synth_root, resume=True, report=False, verbose=0)
    summary = run_study(load_space(space), out=out, data_root=synth_root, extend=True, report=False, verbose=0)
    assert summary["trained"] == 1
    merged = pd.read_parquet(out / "trials.parquet")
    assert sorted(merged["config/seed"]) == [0, 1]
    old = merged.set_index("trial_id").loc[first["trial_id"]]
    assert (old["wall_time_s"].to_numpy() == first["wall_time_s"].to_numpy()).all()
    assert set(merged["experiment"]) == {"run-1", "run-2"}


def test_cluster_yaml_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert all(t["resources"]["GPU"] == 1 and t["min_workers"] == 0 for t in workers)


def _fake_cluster_class():
    from ray.cluster_utils import AutoscalingCluster

    class FakeAutoscalingCluster(AutoscalingCluster):
        """Ray's AutoscalingCluster reads its base config from fake_multi_node/example.yaml, which the
        ray 2.60 wheel does not ship; the same base config, written here (from Ray's repository)."""

        def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
            config = {
                "cluster_name": "fake_multinode",
                "max_workers": 8,
                "provider": {
                    "type": "fake_multinode",
                    "use_node_id_as_ip": True,
                    "disable_node_updaters": True,
                    "disable_launch_config_check": True,
                },
                "auth": {"ssh_user": "ubuntu"},
                "head_node_type": "ray.head.default",
                "upscaling_speed": 1.0,
                "idle_timeout_minutes": 0.1,
                "docker": {},
                "file_mounts": {},
                "cluster_synced_files": [],
                "file_mounts_sync_continuously": False,
                "rsync_exclude": [],
                "rsync_filter": [],
                "initialization_commands": [],
                "setup_commands": [],
                "head_setup_commands": [],
                "worker_setup_commands": [],
                "head_start_ray_commands": [],
                "worker_start_ray_commands": [],
                "available_node_types": {
                    **worker_node_types,
                    "ray.head.default": {"resources": head_resources, "node_config": {}, "max_workers": 0},
                },
            }
            config.update(config_kwargs)
            return config

        def start(self, _system_config=None, override_env=None):
            """Ray's start runs `ray stop --force` (every Ray on the machine) and takes the default ports;
            this one starts the head in a session folder of its own on free ports, and touches no other Ray."""
            self.temp_dir = tempfile.mkdtemp(prefix="fake-", dir=os.environ["RAY_TMPDIR"])
            port = free_port()
            from ray._private.services import get_node_ip_address

            self.address = f"{get_node_ip_address()}:{port}"
            # the fake provider's nodes join the head at this address (its default is port 6379)
            self._config["provider"]["gcs_address"] = self.address
            config_path = Path(self.temp_dir) / "autoscaling.json"
            config_path.write_text(json.dumps(self._config))
            command = [
                "ray",
                "start",
                "--head",
                f"--autoscaling-config={config_path}",
                f"--port={port}",
                f"--dashboard-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}",
                "--include-dashboard=false",
            ]
            resources = dict(self._head_resources)
            for key in ("CPU", "GPU"):
                if key in resources:
                    command.append(f"--num-{key.lower()}s={resources.pop(key)}")
            if resources:
                command.append(f"--resources={json.dumps(resources)}")
            # RAY_TMPDIR, not --temp-dir: the fake provider finds the head through the session folder it names
            env = {
                **os.environ,
                "RAY_TMPDIR": self.temp_dir,
                "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                "RAY_FAKE_CLUSTER": "1",
            }
            env.update(override_env or {})
            subprocess.run(command, env=env, check=True, capture_output=True)

        def shutdown(self):
            stop_ray_started_under(self.temp_dir)

    return FakeAutoscalingCluster


def test_smoke_runs_on_a_fake_autoscaling_cluster_of_the_same_node_types(synth_root, tmp_path):
    """Ray's fake multi-node provider starts worker nodes of cluster.yaml's types on demand."""
    import ray

    _FakeAutoscalingCluster = _fake_cluster_class()

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    types = config["available_node_types"]
    worker_types = {
        name: {
            "resources": {"CPU": 1, **{k: v for k, v in t["resources"].items() if k != "CPU"}},
            "node_config": {},
            "min_workers": 0,
            "max_workers": 2,
        }
        for name, t in types.items()
        if name != config["head_node_type"]
    }
    cluster = _FakeAutoscalingCluster(head_resources={"CPU": 0}, worker_node_types=worker_types)
    cluster.start()
    out = tmp_path / "fake"
    try:
        ray.init(address=cluster.address)
        space = _space_file(tmp_path, seeds=[0], architectures=("waveform",))
        run_study(load_space(space), out=out, data_root=synth_root, report=False, verbose=0)
        # two GPUs per trial: no node type has them; the autoscaler says so (or launches nothing for a
        # minute), and the study stops instead of waiting forever with Tune's warning
        started = time.monotonic()
        with pytest.raises(
            ClusterError,
            match=r"each trial asks for 1 CPU and 2 GPU; .* its autoscaler (finds that none of its node types|launched no node)",
        ):
            run_study(
                load_space(space), out=tmp_path / "two-gpus", data_root=synth_root, resources={"cpu": 1, "gpu": 2},
                report=False, verbose=0,
            )  # fmt: skip
        waited = time.monotonic() - started
    finally:
        ray.shutdown()
        cluster.shutdown()
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 1 and trials["epochs"].iloc[0] >= 1
    assert waited < AUTOSCALER_WAIT_S + 30
    print(f"two GPUs per trial refused after {waited:.0f} s")


def _most_at_once(spans) -> int:
    """The most (start, end) intervals that overlap at one instant."""
    return max(sum(start < other_end and other_start < end for other_start, other_end in spans) for start, end in spans)


def test_paper_resources_start_gpu_workers_that_share_each_gpu(synth_root, tmp_path):
    """cluster.yaml's node types on Ray's fake autoscaling provider (a head without a GPU, GPU workers
    started on demand): trials asking for 1/k of a GPU run k at a time on one GPU worker, and none
    runs on the head. The fake GPUs have no CUDA behind them, so the trials train with
    train.device=auto on the worker's CPU and record that."""
    import ray

    k = 2
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    types = config["available_node_types"]
    head = config["head_node_type"]
    worker_types = {
        name: {"resources": dict(t["resources"]), "node_config": {}, "min_workers": 0, "max_workers": 1}
        for name, t in types.items()
        if name != head
    }
    assert all(t["resources"]["GPU"] == 1 for t in worker_types.values())
    cluster = _fake_cluster_class()(head_resources=dict(types[head]["resources"]), worker_node_types=worker_types)
    cluster.start()
    out = tmp_path / "gpu"
    try:
        ray.init(address=cluster.address)
        head_node = ray.get_runtime_context().get_node_id()
        space = _space_file(tmp_path, seeds=[0, 1, 2, 3], architectures=("waveform",))
        summary = run_study(
            load_space(space),
            out=out,
            data_root=synth_root,
            report=False,
            verbose=0,
            resources={"cpu": 1, "gpu": 1 / k},
            overrides={"train.device": "auto", "train.max_epochs": 6, "train.patience": 6},
        )
        nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes()}
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert summary["failed"] == 0
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 4
    assert head_node not in set(trials["node_id"])  # no trial on the head
    assert all(nodes[node].get("GPU", 0) >= 1 for node in trials["node_id"])  # every trial on a GPU worker
    assert (trials["device"] == "cpu").all()  # fake GPUs: no CUDA, train.device=auto
    metrics = json.loads(next((out / "trials").glob("*/metrics.json")).read_text())
    assert "train.device: auto" in metrics["device"]["note"]
    # k-way sharing: some worker ran k trials at the same time, and none ran more than k
    most = max(_most_at_once(rows[["started_at", "finished_at"]].to_numpy()) for _, rows in trials.groupby("node_id"))
    assert most == k, f"no GPU worker ran {k} trials at once (most: {most})"
    print(f"GPU workers used: {trials['node_id'].nunique()}; most trials at once on one worker: {most}; on the head: 0")


def test_a_driver_without_the_clusters_token_is_refused_in_one_line():
    """Token authentication is on for every Ray the tests start (as Ray 2.59+ does for users): a driver
    with another token, or with authentication off, is refused by the cluster, in one line that
    names the fix; one with the cluster's token gets the plan."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    command = [sys.executable, "-m", "study.run", "--space", "smoke", "--address", cluster.address, "--dry-run"]
    try:
        ray.init(address=cluster.address)
        from ray._raylet import AuthenticationMode, get_authentication_mode

        assert get_authentication_mode() == AuthenticationMode.TOKEN
        ray.shutdown()
        outsiders = {
            "another token": {**os.environ, "RAY_AUTH_TOKEN": "0" * 64},
            "no authentication": {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
            | {"RAY_AUTH_MODE": "disabled"},
        }
        for name, env in outsiders.items():
            done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
            assert done.returncode == 2 and len(lines) == 1, (name, done.stderr[-2000:])
            assert (
                f"the Ray cluster at {cluster.address} is up but refused this driver's authentication token" in lines[0]
            )
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "study plan: smoke" in done.stdout, done.stderr[-2000:]
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_cluster_faults_fail_before_training_in_one_line(synth_root, tmp_path, s3_storage, monkeypatch):
    """A node that cannot reach the S3 storage, a driver whose credentials it rejects, and trials no
    node can hold: each stops the study before it trains, in one line naming the node, the URI or the
    numbers, and the fix."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    # a worker whose processes cannot reach the storage's endpoint (its raylet's environment, and so theirs)
    cut_off = cluster.add_node(num_cpus=1, env_vars={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"})
    space, out = load_space("smoke"), tmp_path / "study"
    try:
        ray.init(address=cluster.address)
        with pytest.raises(ClusterError) as refused:
            run_study(space, out=out, data_root=synth_root, storage=s3_storage["uri"], report=False, verbose=0)
        message = str(refused.value)
        assert "\n" not in message
        assert message.startswith(
            f"node {cut_off.node_ip_address} ({cut_off.node_id[:8]}) cannot write the trials' checkpoints to {s3_storage['uri']} "
        )
        assert "NETWORK_CONNECTION" in message and "AWS_ENDPOINT_URL" in message
        print(message)

        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOBODY")  # the driver's credentials, rejected by the server
        with pytest.raises(
            ClusterError, match=r"^this driver cannot write .* to s3://audiofuse-test/studies .*ACCESS_DENIED"
        ):
            run_study(space, out=out, data_root=synth_root, storage=s3_storage["uri"], report=False, verbose=0)

        started = time.monotonic()
        with pytest.raises(ClusterError) as infeasible:
            run_study(space, out=out, data_root=synth_root, resources={"cpu": 1, "gpu": 1}, report=False, verbose=0)
        assert time.monotonic() - started < 30
        message = str(infeasible.value)
        assert message.startswith("no node can run a trial: each trial asks for 1 CPU and 1 GPU; the cluster has ")
        assert message.count(": 1 CPU, 0 GPU") == 2 and "--gpus-per-trial" in message
        print(message)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert not (out / "trials.parquet").exists() and not list(out.glob("trials/*"))  # nothing trained
