"""Shared fixtures: an isolated host (caches and Ray in the test's own temporary folders), the real
datasets, a synthetic set, a trained trial; and the helpers that stop only the Ray processes a test started."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
# The developers' copy of the real data (tests and CI only; a user's clone has none): laid out once
# into the system temp folder. A user runs the real-data tests with REAL_DATA_VARIABLE naming a folder
# laid out by `python -m study.data layout`.
DEVELOPER_DATA = REPO.parent / "shared" / "data"
REAL_DATA_VARIABLE = "AUDIOFUSE_REAL_DATA"

# Ray's folder and token, set when pytest loads this file, before any test module imports Ray: the
# Ray client reads its token settings once, and a token other than the one its clusters start with
# (say the user's ~/.ray/auth_token) is refused. Short: Ray's socket paths below it stay under 107 characters.
RAY_DIR = tempfile.mkdtemp(prefix="afray-")
os.environ["RAY_TMPDIR"] = RAY_DIR
# Ray's token authentication on, as for users; this session's own token
Path(RAY_DIR, "auth_token").write_text(secrets.token_hex(32))
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(Path(RAY_DIR, "auth_token")))
os.environ.pop("RAY_AUTH_TOKEN", None)
# the `ray` command of this interpreter's environment, also when the venv is not activated
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(autouse=True, scope="session")
def isolated_host(tmp_path_factory):
    """Tests write only inside the repository and the system temp folder, and meet no Ray but their own:
    the project's cache, matplotlib's and numba's caches, and Ray's sessions (which `ray.init("auto")`
    searches) all live in this session's temporary folders. At the end, Ray processes started under
    this session's folder that are still alive are stopped, by pid; nothing else is touched."""
    os.environ["AUDIOFUSE_CACHE"] = str(tmp_path_factory.mktemp("audiofuse-cache"))
    os.environ["MPLCONFIGDIR"] = str(tmp_path_factory.mktemp("matplotlib"))
    # librosa's compiled kernels, kept between sessions in the temp folder (compiling them takes ~20 s)
    os.environ["NUMBA_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / "audiofuse-test-numba-cache")
    import torch

    torch.set_num_threads(1)
    yield
    stop_ray_started_under(RAY_DIR)
    shutil.rmtree(RAY_DIR, ignore_errors=True)


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_processes_under(folder: str | Path) -> list[psutil.Process]:
    """The Ray processes (raylet, GCS, workers, agents) of sessions in ``folder``: their command
    lines name their session folder, which is how a test finds the Ray it started and no other."""
    folder, found = str(folder), []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid != os.getpid() and any(folder in arg for arg in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def stop_ray_started_under(folder: str | Path, grace_s: float = 5.0) -> int:
    """SIGTERM, then SIGKILL after ``grace_s``, to the Ray processes of sessions in ``folder``
    (by pid; never `ray stop`, which stops every Ray on the machine). Returns how many there were."""
    processes = ray_processes_under(folder)
    for proc in list(processes):  # workers rename themselves (ray::IDLE): found as the raylet's children
        try:
            processes += [child for child in proc.children(recursive=True) if child not in processes]
        except psutil.NoSuchProcess:
            pass
    for proc in processes:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    return len(processes)


PLUGINS = Path(__file__).resolve().parent / "plugins"
EXAMPLE_PLUGIN = "audiofuse_example_plugin"


@pytest.fixture
def example_plugin(monkeypatch):
    """The example plugin of tests/plugins, importable here and by the Ray workers a test starts after this
    (PYTHONPATH); what it registers is registered for the test only. Yields its module name."""
    from study import registry
    from study.data import LOADERS
    from study.models import ARCHITECTURES, FUSIONS
    from study.perturbations import PERTURBATIONS

    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")])))
    registries = [ARCHITECTURES, FUSIONS, LOADERS, PERTURBATIONS]
    saved = [(dict(r._objects), dict(r._info)) for r in registries]
    loaded = list(registry._loaded)
    yield EXAMPLE_PLUGIN
    for r, (objects, info) in zip(registries, saved):
        r._objects, r._info = objects, info
    registry._loaded[:] = loaded
    sys.modules.pop(EXAMPLE_PLUGIN, None)


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for a module's tests: every study they run connects to it instead of starting its own."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def real_root() -> Path:
    """The real datasets in the loaders' layout: the folder $AUDIOFUSE_REAL_DATA names (laid out by
    `python -m study.data layout`), else the developers' copy laid out into the system temp folder;
    skipped, saying how to enable it, when neither exists."""
    if os.environ.get(REAL_DATA_VARIABLE):
        root = Path(os.environ[REAL_DATA_VARIABLE]).expanduser()
        if not (root / "physionet2016").is_dir():
            pytest.fail(
                f"{REAL_DATA_VARIABLE}={root} holds no physionet2016/: lay it out with python -m study.data layout"
            )
        return root
    if not (DEVELOPER_DATA / "materialize.py").is_file():
        pytest.skip(
            f"real data not available: set {REAL_DATA_VARIABLE} to a folder laid out by `python -m study.data "
            "layout` (physionet2016/, pascal/, icbhi2017/) to run these tests"
        )
    dest = Path(tempfile.gettempdir()) / "audiofuse-test-real-data"
    subprocess.run([sys.executable, str(DEVELOPER_DATA / "materialize.py"), str(dest)], check=True, capture_output=True)
    return dest


@pytest.fixture(scope="session")
def synth_root(isolated_host) -> Path:
    """The built-in synthetic PhysioNet, PASCAL and ICBHI datasets (what `study.run` uses by default)."""
    from study.synthetic import default_data_root

    return default_data_root()


@pytest.fixture(scope="session")
def trained_study_template(synth_root, tmp_path_factory):
    """One trained smoke trial (fusion, 1 epoch, 16 recordings per evaluation set) in study.run's file layout.

    Trained once per test session; tests take a private copy through the ``trained_study`` fixture.
    Returns (folder, the trial's TrialData).
    """
    import pandas as pd

    from study.config import load_space
    from study.results import write_study, write_trial
    from study.train import train_and_evaluate
    from study.trial_data import prepare_data

    config = load_space("smoke").trial_configs(
        {"model.architecture": "fusion", "seed": 0, "train.max_epochs": 1, "data.max_eval": 16}
    )[0]
    data = prepare_data(config, synth_root, progress=False, n_jobs=1)
    result = train_and_evaluate(config, data, trial_id="t0")
    out = tmp_path_factory.mktemp("trained") / "study"
    write_trial(out / "trials" / "t0", config, result, data.info, "t0")
    trials = pd.DataFrame(
        [{"trial_id": "t0", "config/seed": 0, "config/model.architecture": "fusion", "threshold": result.threshold}]
    )
    state = {"space": {"name": "tiny", "study": "heart"}, "data_root": str(synth_root)}
    write_study(out, state, trials, result.predictions)
    return out, data


@pytest.fixture
def trained_study(trained_study_template, tmp_path):
    """A private copy of the session's trained trial folder (tests change it), with its TrialData."""
    folder, data = trained_study_template
    return Path(shutil.copytree(folder, tmp_path / "study")), data


@pytest.fixture
def s3_storage(monkeypatch):
    """An S3-compatible server on loopback (moto's standalone server) that checks credentials like S3:
    one IAM user may use the bucket ``audiofuse-test``; this process, and every Ray started after it,
    gets that user's keys and the endpoint through the AWS_* variables pyarrow (Tune's storage) reads.
    Yields {"uri", "endpoint", "client"} (a boto3 S3 client for looking into the bucket)."""
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # the first 4 requests (user, key, policy, bucket) need no credentials; every later one does
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError(f"moto_server did not start on port {port}") from None
                time.sleep(0.1)
        anyone = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        iam = boto3.client("iam", aws_access_key_id="setup", aws_secret_access_key="setup", **anyone)
        iam.create_user(UserName="study")
        key = iam.create_access_key(UserName="study")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="study", PolicyName="bucket", PolicyDocument=json.dumps(policy))
        keys = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
        client = boto3.client("s3", **keys, **anyone)
        client.create_bucket(Bucket="audiofuse-test")
        for name, value in {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata lookups for credentials
        }.items():
            monkeypatch.setenv(name, value)
        yield {"uri": "s3://audiofuse-test/studies", "endpoint": endpoint, "client": client}
    finally:
        server.terminate()
        server.wait(timeout=10)
