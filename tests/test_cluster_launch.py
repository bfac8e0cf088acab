"""`ray up cluster.yaml` for real: Ray's cluster launcher with its local (on-premise) node provider,
over SSH to 127.0.0.1, with cluster.yaml's own setup and start commands; then the smoke study as a
Ray Job with token authentication, its logs and status, `ray rsync-down` of its results, `ray down`.

The test is its own host: an sshd on a free loopback port, run from a config in a temp folder, whose
one authorised key gives the "remote" login a home, a Ray temp folder and ports of its own
(authorized_keys `environment=`), so nothing here meets a Ray or a home it did not make. The login's
`ray` (in the venv its .bashrc activates) stops only this test's Ray processes: cluster.yaml and `ray down` say
`ray stop`, which on a machine of its own stops that node's Ray, and here would stop every Ray on
the machine.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import free_port, stop_ray_started_under

REPO = Path(__file__).resolve().parents[1]
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
# ProxyCommand: ssh's own stdin/stdout to the test sshd's port (Ray's launcher has no ssh port setting)
RELAY = """import socket, sys, threading
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def back():
    while data := sock.recv(65536):
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
reader = threading.Thread(target=back)
reader.start()
while data := sys.stdin.buffer.read1(65536):
    sock.sendall(data)
sock.shutdown(socket.SHUT_WR)
reader.join()
"""
# the login's `ray` command (its venv reuses this environment's packages, so pip made no console script):
# `ray stop` stops this test's Ray processes only (those under $RAY_TMPDIR), by pid; the rest is Ray's CLI
SCOPED_RAY = """#!/bin/sh
if [ "$1" = stop ]; then
  exec {python} -c 'import sys; sys.path.insert(0, "{tests}"); from conftest import stop_ray_started_under; stop_ray_started_under(sys.argv[1])' "$RAY_TMPDIR"
fi
exec {python} -c 'import sys; from ray.scripts.scripts import main; sys.argv[0] = "ray"; main()' "$@"
"""


def _require_tools() -> None:
    missing = [tool for tool in ("ssh", "ssh-keygen", "rsync") if shutil.which(tool) is None]
    if not Path(SSHD).is_file():
        missing.append("sshd")
    if missing:
        pytest.fail(
            f"the launcher test needs {missing}: apt-get install openssh-server openssh-client rsync (.ci/run does)"
        )


@pytest.fixture
def loopback_host(tmp_path):
    """An sshd on 127.0.0.1 whose one key logs in to a home of its own; yields what the launcher needs."""
    _require_tools()
    home = Path(tempfile.mkdtemp(prefix="afcl-"))  # short: Ray's socket paths live below it
    keys = tmp_path / "ssh"
    keys.mkdir()
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    ports = {name: free_port() for name in ("ssh", "head", "object_manager", "dashboard", "agent")}
    # the login's Python environment: a venv reusing this one's packages (a path file adds the folder but
    # runs none of its path files), so cluster.yaml's pip install finds every dependency installed
    venv = home / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    ray = venv / "bin" / "ray"
    ray.write_text(SCOPED_RAY.format(python=venv / "bin" / "python", tests=REPO / "tests"))
    ray.chmod(0o755)
    (home / ".profile").write_text("[ -f ~/.bashrc ] && . ~/.bashrc\n")  # as Ubuntu's default .profile does
    environment = {
        "HOME": str(home),
        "RAY_TMPDIR": str(home / "ray"),
        "RAY_HEAD_PORT": ports["head"],
        "RAY_OBJECT_MANAGER_PORT": ports["object_manager"],
        "RAY_DASHBOARD_PORT": ports["dashboard"],
        "RAY_DASHBOARD_AGENT_PORT": ports["agent"],
    }
    options = ",".join(f'environment="{k}={v}"' for k, v in environment.items())
    (keys / "authorized_keys").write_text(f"{options} {(keys / 'client.pub').read_text()}")
    config = keys / "sshd_config"
    config.write_text(
        f"Port {ports['ssh']}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\nPidFile {keys / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitUserEnvironment yes\n"
        "StrictModes no\nUsePAM no\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder, which the package's service makes
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=open(keys / "sshd.log", "w"))
    relay = keys / "relay.py"
    relay.write_text(RELAY)
    try:
        yield {
            "home": home,
            "key": keys / "client",
            "proxy": f"{sys.executable} {relay} 127.0.0.1 {ports['ssh']}",
            "dashboard": f"http://127.0.0.1:{ports['dashboard']}",
        }
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)
        stop_ray_started_under(home)
        shutil.rmtree(home, ignore_errors=True)


def launcher_config(host: dict, token: Path, name: str) -> dict:
    """cluster.yaml for the local provider: its file mounts, rsync rules and every setup and start
    command as they are; the provider and login are this machine's (the local provider makes its own
    node types: a head, no workers)."""
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    commands = (
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    return {
        "cluster_name": name,
        "max_workers": 0,
        "provider": {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
        "auth": {
            "ssh_user": getpass.getuser(),
            "ssh_private_key": str(host["key"]),
            "ssh_proxy_command": host["proxy"],
        },
        # the token of this test session, where cluster.yaml takes the user's ~/.ray/auth_token
        "file_mounts": {**config["file_mounts"], "~/.ray/auth_token": str(token)},
        "rsync_exclude": config["rsync_exclude"],
        "rsync_filter": config["rsync_filter"],
        **{key: config[key] for key in commands},
    }


def _ray(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(["ray", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"ray {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_ray_up_runs_the_smoke_study_as_a_job_and_rsync_down_brings_its_results(loopback_host, synth_root, tmp_path):
    token = Path(os.environ["RAY_AUTH_TOKEN_PATH"])
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(launcher_config(loopback_host, token, f"audiofuse-test-{os.getpid()}")))
    try:
        _ray("up", "-y", "--no-config-cache", str(config))
        submitted = _ray(
            "job", "submit", "--address", loopback_host["dashboard"], "--working-dir", str(REPO), "--no-wait",
            "--", "python", "-m", "study.run", "--space", "smoke", "--data-root", str(synth_root),
            "--out", "~/results/smoke",
        )  # fmt: skip
        job_id = next(w for w in submitted.stdout.replace("'", " ").split() if w.startswith("raysubmit_"))
        deadline, status = time.time() + 900, ""
        while time.time() < deadline:
            done = _ray("job", "status", "--address", loopback_host["dashboard"], job_id)
            status = (done.stdout + done.stderr).lower()  # "Job 'raysubmit_…' succeeded"
            if any(s in status for s in ("succeeded", "failed", "stopped")):
                break
            time.sleep(5)
        logs = _ray("job", "logs", "--address", loopback_host["dashboard"], job_id).stdout
        (tmp_path / "job.log").write_text(logs)  # the whole log, for a failure's reader
        assert "succeeded" in status, f"{status}\n{logs[-3000:]}\n(the whole log: {tmp_path / 'job.log'})"
        assert "smoke: 4 trials in the study, 4 trained now, 0 failed" in logs
        results = tmp_path / "results"
        _ray("rsync-down", str(config), "~/results/smoke/", f"{results}/")
    finally:
        subprocess.run(["ray", "down", "-y", str(config)], cwd=REPO, capture_output=True, text=True, timeout=300)
    trials = pd.read_parquet(results / "trials.parquet")
    assert len(trials) == 4 and (trials["config/model.architecture"].value_counts() == 2).all()
    assert len(pd.read_parquet(results / "predictions.parquet")) > 0
    report = (results / "report.md").read_text()
    assert report.startswith("# Report: study `smoke`") and (results / "tables" / "intervals.csv").is_file()
    assert json.loads((results / "study.json").read_text())["space"]["name"] == "smoke"


def test_the_launcher_config_takes_cluster_yamls_commands_verbatim(tmp_path):
    """The tested file and the AWS file cannot drift: every setup and start command, file mount and
    rsync rule of cluster.yaml is in the config the launcher test runs."""
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    host = {"key": tmp_path / "key", "proxy": "relay"}
    tested = launcher_config(host, tmp_path / "token", "audiofuse-test")
    for key in ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands", "rsync_exclude"):
        assert tested[key] == config[key]
    assert set(tested["file_mounts"]) == set(config["file_mounts"])
    assert any("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"])
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    # authentication is never switched off by the project (a test's outsider switches it off to be refused)
    shipped = [REPO / "cluster.yaml", REPO / ".ci" / "run", REPO / "README.md", *REPO.glob("study/**/*.py")]
    shipped += [*REPO.glob("docs/*.md"), *REPO.glob("search_spaces/*.yaml"), REPO / "pyproject.toml"]
    assert not [p for p in shipped if '"disabled"' in p.read_text() or "AUTH_MODE=disabled" in p.read_text()]
