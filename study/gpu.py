"""A study at the paper's scale on a borrowed GPU machine, prepared here and run there in two commands.

    python -m study.gpu prepare PREP --data-root DATA [--space branches] [--scale paper] [--set key=value ...]
                                [--waves "0,1,2;3,4;5,6,7,8,9"] [--bench-args "..."] [--local]
    python -m study.gpu device features PREP --out DIR     # command 1, on the GPU machine
    python -m study.gpu device study PREP --out DIR [--deadline S] [--gpus-per-trial G]   # command 2
    python -m study.gpu collect --features DIR1 --study DIR2 --out results/reference/paper_gpu [--prep PREP]

The machine this is written for is lent now and then, for minutes: each command
may send the repository plus named ignored folders, 64 MiB in all; it has no
network, Python 3.12 with torch and timm but no Ray, librosa, soundfile or soxr;
and it keeps what a command left in ignored folders only while it stays up
between two commands. ``prepare`` builds, in the ignored folder PREP inside the
repository:

* ``data/``: the recordings the study reads, in the loaders' layouts, cut to the
  feature window plus :data:`MARGIN_S` (the profile reads the first window
  only) and stored as FLAC, with ``manifest.json`` (each file's bytes and
  BLAKE2b digest, and its source's);
* ``wheels/``: the missing pure and cp312 manylinux x86_64 packages, at the
  versions installed here;
* ``ray.tar.xz``: Ray's cp312 wheel without its Java jars, RLlib and Serve, so
  that it fits beside the data;
* ``plan.json`` and ``COMMANDS.md``: the two commands, what each carries, and
  the bytes each sends against the limit (refused when over it).

Command 1 (``device features``) checks the data against the manifest, installs
the wheels into ``PREP/site``, fills the feature cache ``PREP/cache`` on every
core through the same :func:`study.trial_data.prepare_data` a trial uses, and
runs ``study.bench`` (bf16 against fp32, and trials sharing the GPU).
Command 2 (``device study``) unpacks Ray and runs the study in waves of seeds
with ``study.run`` (its first wave always; each further wave when the last
one's duration says it fits the deadline), then packs the study folder,
checkpoints left out, into ``study.tar.gz``. ``collect`` turns what came back
into a normal study folder and writes its report.

``--local`` prepares for a rehearsal on this machine's own Python (no wheels,
no Ray archive): the tests run the same commands with it on a tiny subset.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as metadata
import io
import json
import lzma
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the study modules are imported where used: the GPU machine lacks Ray and the audio libraries
    from .config import TrialConfig

from .results import CHECKPOINT_FILE, REPORT_FILE, STUDY_FILE, TUNE_DIR, read_state, write_state

__all__ = [
    "REPO",
    "LIMIT_BYTES",
    "MARGIN_S",
    "RAY_VERSION",
    "RAY_LEFT_OUT",
    "WHEELS",
    "WHEEL_PLATFORMS",
    "DEVICE_PYTHON",
    "DATASETS",
    "DEFAULT_BENCH_ARGS",
    "STUDY_TAR",
    "PREPARED_NAMES",
    "PrepareError",
    "build_ray_archive",
    "repository_bytes",
    "plan_calls",
    "parse_waves",
    "prepare",
    "format_plan",
    "verify_manifest",
    "device_features",
    "datasets_present",
    "fill_cache",
    "wave_resources",
    "device_study",
    "pack_study",
    "collect",
    "main",
]

REPO = Path(__file__).resolve().parents[1]
LIMIT_BYTES = 64 * 2**20  # what one command may send: the repository's files plus its carried paths
MARGIN_S = 0.1  # audio kept past the window: resampling the cut recording then changes no feature beyond 1e-5
RAY_VERSION = "2.60.0"
RAY_LEFT_OUT = ("ray/jars/", "ray/rllib/", "ray/serve/")  # Java, RLlib, Serve: unused by Tune, 47 MB unpacked
# What the GPU machine lacks (its image has torch, timm, numpy, pandas, pyarrow, scipy, scikit-learn,
# numba, aiohttp, grpcio, msgpack, protobuf, pyyaml, requests, click, filelock, psutil): Ray's and the
# audio stack's missing dependencies, carried at the versions installed here.
WHEELS = (
    "soundfile",
    "cffi",
    "pycparser",
    "soxr",
    "librosa",
    "audioread",
    "decorator",
    "pooch",
    "platformdirs",
    "jsonschema",
    "jsonschema-specifications",
    "referencing",
    "rpds-py",
    "tensorboardX",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
)
WHEEL_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
DEVICE_PYTHON = "3.12"
DATASETS = ("physionet2016", "pascal")  # the datasets this module can cut (recordings read from their start)
DEFAULT_BENCH_ARGS = "--device cuda --sizes paper --repeats 2 --sharing 1,2,4,8,12"
STUDY_TAR = "study.tar.gz"
# command 1's steps may not eat the time command 2 needs
FEATURES_TIMEOUT_S, BENCH_TIMEOUT_S = 240, 300
# what a prepared folder holds: built here, and written there by the two commands
PREPARED_NAMES = {"data", "manifest.json", "wheels", "ray.tar.xz", "plan.json", "COMMANDS.md"}
PREPARED_NAMES |= {"site", "ray", "cache", "numba-cache", "bench.json", "study"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _blake2b(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _write_json(path: Path, obj, indent: int | None = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=indent, default=str))
    os.replace(tmp, path)


class PrepareError(ValueError):
    """The prepared run cannot be built or run as asked; the message says why and what to change."""


# ---------------------------------------------------------------- prepare: the data


def _cut_file(source: Path, target: Path, keep_s: float) -> dict:
    """Write the first ``keep_s`` seconds of ``source`` to ``target`` losslessly: FLAC for 8-, 16- and
    24-bit PCM, the source's own format otherwise. Returns what the manifest records."""
    import soundfile as sf

    info = sf.info(str(source))
    frames = min(info.frames, int(round(keep_s * info.samplerate)))
    lossless_flac = {"PCM_S8": ("int16", "PCM_16"), "PCM_U8": ("int16", "PCM_16"), "PCM_16": ("int16", "PCM_16")}
    lossless_flac["PCM_24"] = ("int32", "PCM_24")
    if info.subtype in lossless_flac:
        dtype, subtype = lossless_flac[info.subtype]
        target = target.with_suffix(".flac")
        audio, rate = sf.read(str(source), frames=frames, dtype=dtype, always_2d=True)
        sf.write(str(target), audio, rate, subtype=subtype, format="FLAC", compression_level=1.0)
    else:  # 32-bit and float samples: FLAC cannot hold them, the cut stays in the source's format
        target = target.with_suffix(source.suffix)
        audio, rate = sf.read(str(source), frames=frames, dtype="float64", always_2d=True)
        sf.write(str(target), audio, rate, subtype=info.subtype, format=info.format)
    return {
        "path": target,
        "bytes": target.stat().st_size,
        "blake2b": _blake2b(target),
        "sample_rate": rate,
        "frames": frames,
        "source": str(source),
        "source_blake2b": _blake2b(source),
        "source_seconds": info.frames / info.samplerate,
    }


def _cut_dataset(name: str, root: Path, dest: Path, keep_s: float) -> list[dict]:
    """Cut every recording the loader of ``name`` reads from ``root`` into ``dest`` in the same layout,
    with the label files copied as they are. Returns the manifest rows."""
    from .data import load_dataset

    if name == "physionet2016":
        dataset = load_dataset(name, root)
        copies = [p for p in root.glob("training-*/*") if p.suffix.lower() in (".csv", ".hea")]
        copies += [p for p in (root / "validation").glob("*.csv")]  # the test list; its audio copies are not read
        # PhysioNet's training records are read from their training folders, test records included
    else:  # pascal: the paper mapping keeps every labelled file; unlabelled rows need no file
        dataset = load_dataset(name, root, mapping="paper")
        copies = [root / f"{s}.csv" for s in ("set_a", "set_b") if (root / f"{s}.csv").is_file()]
    rows = []
    for path in copies:
        target = dest / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        rows.append({"path": target, "bytes": target.stat().st_size, "blake2b": _blake2b(target), "source": str(path)})
    for source in dataset.table["path"]:
        source = Path(source)
        target = dest / source.relative_to(root.resolve())
        target.parent.mkdir(parents=True, exist_ok=True)
        rows.append(_cut_file(source, target, keep_s))
    return rows


def _study_datasets(configs: list[TrialConfig]) -> tuple[list[str], float]:
    """The datasets a study's trials read and the seconds of audio its features need from each
    recording; refused when a trial reads more than each recording's first window."""
    names, keep_s = set(), 0.0
    for trial in configs:
        data = trial.data
        names |= {data.train_set} | {spec.split(":")[0] for spec in data.eval_sets}
        if data.extra_roots or data.perturbations or data.eval_variants:
            raise PrepareError(
                "the prepared GPU run carries one root per dataset and clean evaluation sets only; this "
                "study sets data.extra_roots, perturbations or eval_variants"
            )
        profile = trial.features
        if profile.windows != "first":
            raise PrepareError(
                f"features.windows is {profile.windows!r}: the cut recordings hold the first window only"
            )
        keep_s = max(keep_s, profile.window_s + MARGIN_S)
    unknown = sorted(names - set(DATASETS))
    if unknown:
        raise PrepareError(f"the prepared GPU run cuts {list(DATASETS)} only; the study reads {unknown}")
    return sorted(names, key=DATASETS.index), keep_s


# ---------------------------------------------------------------- prepare: wheels and Ray


def _download(names: list[str], dest: Path) -> None:
    """pip download of cp312 manylinux x86_64 wheels (no dependencies: each is named) into ``dest``."""
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", DEVICE_PYTHON, "--implementation", "cp", *platforms, "-d", str(dest), *names]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise PrepareError(f"pip download failed (it needs PyPI):\n{done.stderr[-2000:]}")


def _wheel_file(folder: Path, name: str, version: str) -> Path:
    stem = name.replace("-", "_").lower()
    for path in sorted(folder.glob("*.whl")):
        parts = path.name.split("-")
        if parts[0].lower() == stem and parts[1] == version:
            return path
    raise PrepareError(f"no wheel of {name} {version} in {folder}")


def _has_wheel(folder: Path, name: str, version: str) -> bool:
    try:
        return bool(_wheel_file(folder, name, version))
    except PrepareError:
        return False


def build_ray_archive(wheel: Path, target: Path) -> None:
    """Ray's wheel as a tar.xz without :data:`RAY_LEFT_OUT`, file modes kept (its servers are
    executables; a zip's extract drops the modes), names sorted and times fixed, so the same wheel
    gives the same bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(wheel) as archive, tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for entry in sorted(archive.infolist(), key=lambda e: e.filename):
            if entry.is_dir() or entry.filename.startswith(RAY_LEFT_OUT):
                continue
            info = tarfile.TarInfo(entry.filename)
            info.size, info.mtime = entry.file_size, 0
            info.mode = (entry.external_attr >> 16) & 0o777 or 0o644
            tar.addfile(info, archive.open(entry))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(lzma.compress(buffer.getvalue(), preset=9))
    os.replace(tmp, target)


def _prepare_packages(prep: Path, downloads: Path) -> dict:
    """wheels/ and ray.tar.xz in ``prep``, from wheels downloaded once into ``downloads``."""
    versions = {name: metadata.version(name) for name in WHEELS}
    wanted = [f"{name}=={version}" for name, version in versions.items()] + [f"ray=={RAY_VERSION}"]
    downloads.mkdir(parents=True, exist_ok=True)
    if not all(_has_wheel(downloads, *w.split("==")) for w in wanted):
        _download(wanted, downloads)
    wheels = prep / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    for name, version in versions.items():
        shutil.copy2(_wheel_file(downloads, name, version), wheels)
    ray_wheel = _wheel_file(downloads, "ray", RAY_VERSION)
    archive = downloads / f"ray-{RAY_VERSION}-{_blake2b(ray_wheel)[:12]}-slim.tar.xz"
    if not archive.is_file():
        print(f"building the trimmed Ray archive from {ray_wheel.name} (xz -9, a minute or two) ...", flush=True)
        build_ray_archive(ray_wheel, archive)
    shutil.copy2(archive, prep / "ray.tar.xz")
    return {"wheels": versions, "ray": RAY_VERSION, "ray_wheel": ray_wheel.name}


# ---------------------------------------------------------------- prepare: the commands and their sizes


def repository_bytes(repo: Path = REPO) -> int:
    """Bytes of what every command sends besides its carried paths: tracked files and untracked ones
    git does not ignore."""
    listed = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout
    paths = (repo / name for name in listed.decode().split("\0") if name)
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def _relative(path: Path) -> str:
    """``path`` as the commands name it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path.resolve())


def plan_calls(prep: Path, units: list[tuple[str, int]], limit: int, repo_bytes: int, local: bool) -> list[dict]:
    """Assign the carried data units (relative path, bytes) to the two commands: command 1 carries
    the wheels, command 2 the Ray archive, and the data goes where the larger of the two sends
    least (a tie: more data in command 1, whose features are computed before the study starts).
    Raises PrepareError when no assignment keeps both within ``limit``."""
    # plan.json is written after this: 16 KiB stands for it
    shared = [("plan.json", 16 * 2**10), ("manifest.json", (prep / "manifest.json").stat().st_size)]
    first = shared + ([] if local else [("wheels", _tree_bytes(prep / "wheels"))])
    second = shared + ([] if local else [("ray.tar.xz", (prep / "ray.tar.xz").stat().st_size)])

    def sends(carried):
        return repo_bytes + sum(b for _, b in carried)

    # a handful of units: every split of them is tried, a PASCAL set with its CSV
    groups = {}
    for unit in units:
        groups.setdefault(unit[0].removesuffix(".csv"), []).append(unit)
    groups = list(groups.values())
    splits = []
    for mask in range(2 ** len(groups)):
        ones = [u for i, g in enumerate(groups) if mask >> i & 1 for u in g]
        twos = [u for i, g in enumerate(groups) if not mask >> i & 1 for u in g]
        splits.append((max(sends(first + ones), sends(second + twos)), -sends(first + ones), ones, twos))
    worst, _, ones, twos = min(splits, key=lambda s: s[:2])
    if worst > limit:
        raise PrepareError(
            f"the two commands cannot carry it: the better of them would send {worst / 2**20:.1f} MiB, over the "
            f"{limit / 2**20:.0f} MiB limit (repository {repo_bytes / 2**20:.1f} MiB; "
            + ", ".join(f"{p} {b / 2**20:.1f} MiB" for p, b in first[2:] + second[2:] + units)
            + "): fewer datasets or a smaller repository"
        )
    return [
        {"name": name, "carry": [p for p, _ in carried], "carry_bytes": dict(carried), "bytes": sends(carried)}
        for name, carried in (("features", first + ones), ("study", second + twos))
    ]


def _data_units(prep: Path) -> list[tuple[str, int]]:
    """The data as carried units (relative path, bytes): PhysioNet whole, each PASCAL set and its CSV
    apart (small units pack the two commands better)."""
    units = []
    for dataset in sorted((prep / "data").iterdir()):
        if dataset.name == "pascal":
            for folder in sorted(p for p in dataset.iterdir() if p.is_dir()):
                csv = dataset / f"{folder.name}.csv"
                units.append((f"data/pascal/{folder.name}", _tree_bytes(folder)))
                units.append((f"data/pascal/{csv.name}", csv.stat().st_size))
        else:
            units.append((f"data/{dataset.name}", _tree_bytes(dataset)))
    return units


def _default_waves(seeds: list[int]) -> list[list[int]]:
    """The seeds in waves: 3 first (the least a table needs), then 2 (5 in all), then the rest."""
    return [w for w in (seeds[:3], seeds[3:5], seeds[5:]) if w]


def parse_waves(text: str) -> list[list[int]]:
    """``"0,1,2;3,4"`` → ``[[0, 1, 2], [3, 4]]``."""
    try:
        waves = [[int(s) for s in part.split(",") if s.strip()] for part in text.split(";")]
    except ValueError as exc:
        raise PrepareError(f"--waves {text!r}: expected seeds like '0,1,2;3,4' ({exc})") from exc
    if not all(waves) or len({s for w in waves for s in w}) != sum(map(len, waves)):
        raise PrepareError(f"--waves {text!r}: every wave needs seeds, and no seed may repeat")
    return waves


def prepare(
    prep: Path,
    data_root: Path,
    *,
    space_name: str = "branches",
    scale: str = "paper",
    overrides: dict | None = None,
    waves: list[list[int]] | None = None,
    bench_args: str = DEFAULT_BENCH_ARGS,
    local: bool = False,
    downloads: Path | None = None,
    limit: int = LIMIT_BYTES,
) -> dict:
    """Build the prepared run in ``prep`` (see the module docstring); returns the plan."""
    from .config import load_space
    from .data.audio import cache_dir
    from .provenance import code_version

    overrides = dict(overrides or {})
    space = load_space(space_name, scale)
    seeds = [int(s) for s in space.grid().get("seed", [0])]
    waves = waves or _default_waves(seeds)
    configs = space.trial_configs({**overrides, "seed": [s for w in waves for s in w]})
    names, keep_s = _study_datasets(configs)
    for name in names:
        if not (data_root / name).is_dir():
            raise PrepareError(f"{data_root / name}: missing; the study reads {names} from --data-root")
    strangers = sorted(p.name for p in prep.iterdir() if p.name not in PREPARED_NAMES) if prep.is_dir() else []
    if strangers:
        raise PrepareError(f"{prep} holds {strangers[:5]}, not a prepared run's files; give an empty or new folder")
    shutil.rmtree(prep / "data", ignore_errors=True)
    manifest = []
    for name in names:
        started = time.perf_counter()
        rows = _cut_dataset(name, (data_root / name).resolve(), prep / "data" / name, keep_s)
        manifest += rows
        print(
            f"{name}: {len(rows)} files, {sum(r['bytes'] for r in rows) / 2**20:.1f} MiB "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    for row in manifest:
        row["path"] = str(Path(row["path"]).relative_to(prep))
    _write_json(prep / "manifest.json", {"keep_s": keep_s, "files": manifest}, indent=None)
    packages = {} if local else _prepare_packages(prep, downloads or cache_dir() / "gpu-downloads")
    if local:
        shutil.rmtree(prep / "wheels", ignore_errors=True)
        (prep / "ray.tar.xz").unlink(missing_ok=True)
    repo_bytes = repository_bytes()
    calls = plan_calls(prep, _data_units(prep), limit, repo_bytes, local)
    where = _relative(prep)
    calls[0]["command"] = f'python3 -m study.gpu device features {where} --out "$OUT"'
    calls[1]["command"] = f'python3 -m study.gpu device study {where} --out "$OUT" --deadline 480'
    for call in calls:
        call["carry"] = [f"{where}/{p}" for p in call["carry"]]
    plan = {
        "created": _now(),
        "code": code_version(),
        "space": space.name,
        "scale": scale,
        "overrides": overrides,
        "waves": waves,
        "bench_args": bench_args,
        "data_root": str(data_root),
        "datasets": names,
        "keep_s": keep_s,
        "files": len(manifest),
        "local": local,
        "packages": packages,
        "repository_bytes": repo_bytes,
        "limit_bytes": limit,
        "calls": calls,
    }
    _write_json(prep / "plan.json", plan)
    (prep / "COMMANDS.md").write_text(format_plan(plan))
    return plan


def format_plan(plan: dict) -> str:
    """The commands as a reader runs them: what each carries and sends."""
    lines = [
        f"# Prepared GPU run: {plan['space']} at the {plan['scale']} scale",
        "",
        f"Prepared {plan['created']} from {plan['data_root']} at commit {plan['code'].get('commit')}: "
        f"{plan['files']} files, recordings cut to their first {plan['keep_s']:.2f} s; seed waves "
        f"{plan['waves']}" + (f"; overrides {plan['overrides']}" if plan["overrides"] else "") + ".",
        "",
    ]
    for number, call in enumerate(plan["calls"], start=1):
        lines += [
            f"## Command {number}: {call['name']}",
            "",
            f"sends {call['bytes'] / 2**20:.1f} MiB of {plan['limit_bytes'] / 2**20:.0f} MiB (repository "
            f"{plan['repository_bytes'] / 2**20:.1f} MiB + carried "
            + ", ".join(f"{p} {b / 2**20:.1f}" for p, b in call["carry_bytes"].items())
            + " MiB)",
            "",
            f"carry: {json.dumps(call['carry'])}",
            "",
            "```bash",
            call["command"],
            "```",
            "",
        ]
    lines += [
        "Run command 2 at once after command 1: the feature cache and the installed wheels that command 1",
        "leaves in the prepared folder live only while the machine stays up. `--deadline` is the seconds",
        "command 2 may use; give it what the machine has left, less a minute.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- on the GPU machine


def verify_manifest(prep: Path, present_only: bool) -> int:
    """Check the prepared files against manifest.json; returns how many were checked. With
    ``present_only`` a file not (yet) there is skipped, else it is an error."""
    manifest = json.loads((prep / "manifest.json").read_text())
    checked, bad = 0, []
    for row in manifest["files"]:
        path = prep / row["path"]
        if not path.is_file():
            if not present_only:
                bad.append(f"{path}: missing")
            continue
        if path.stat().st_size != row["bytes"] or _blake2b(path) != row["blake2b"]:
            bad.append(f"{path}: differs from manifest.json")
        checked += 1
    if bad:
        raise PrepareError(f"{len(bad)} prepared file(s) are wrong: " + "; ".join(bad[:5]))
    return checked


def _child_env(prep: Path) -> dict:
    """The environment of the project's processes there: carried packages first on the path, the
    feature cache and numba's compiled kernels kept in the prepared folder."""
    paths = [str(prep / p) for p in ("site", "ray") if (prep / p).is_dir()]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + [str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["AUDIOFUSE_CACHE"] = str(prep / "cache")
    env["NUMBA_CACHE_DIR"] = str(prep / "numba-cache")
    env["PYTHONUNBUFFERED"] = "1"
    # Ray's memory monitor kills workers past 95 % of the memory the kernel reports; a microVM whose
    # memory grows as it is used reports little at first
    env["RAY_memory_monitor_refresh_ms"] = "0"
    return env


def _run_logged(command: list[str], log: Path, env: dict, timeout: float | None = None) -> tuple[int, float]:
    """Run ``command``, its output appended to ``log`` and echoed; (exit status, seconds).
    A command past ``timeout`` is killed with its process group (Ray's workers included): 124."""
    started = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"\n$ {shlex.join(command)}\n")
        out.flush()
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            text=True,
            start_new_session=True,
        )
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            os.killpg(process.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill) if timeout is not None else None
        if timer is not None:
            timer.start()
        for line in process.stdout:
            out.write(line)
            out.flush()
            sys.stdout.write(line)
            sys.stdout.flush()
        process.wait()
        if timer is not None:
            timer.cancel()
        if killed.is_set():
            out.write(f"\n[killed after {timeout:.0f} s]\n")
            return 124, time.perf_counter() - started
    return process.returncode, time.perf_counter() - started


def _environment() -> dict:
    """Python, torch and the GPU the commands ran with."""
    record = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "at": _now()}
    try:
        import torch

        record["torch"] = torch.__version__
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            record["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)}
    except ImportError:
        record["torch"] = None
    smi = shutil.which("nvidia-smi")
    if smi:
        done = subprocess.run(
            [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        record["nvidia_smi"] = done.stdout.strip()
    return record


def device_features(prep: Path, out: Path) -> int:
    """Command 1: check the data, install the wheels, fill the feature cache, run the bench."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    plan = json.loads((prep / "plan.json").read_text())
    log = out / "features.log"
    summary = {"environment": _environment(), "steps": {}}
    print(f"command 1 on {json.dumps(summary['environment'])}", flush=True)
    summary["checked_files"] = verify_manifest(prep, present_only=True)
    if (prep / "wheels").is_dir():
        wheels = sorted(str(p) for p in (prep / "wheels").glob("*.whl"))
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--upgrade",
            "--target",
            str(prep / "site"),
            *wheels,
        ]
        summary["steps"]["wheels"] = _step(command, log, os.environ.copy())
    env = _child_env(prep)
    fill = [sys.executable, "-m", "study.gpu", "device", "fill-cache", str(prep)]
    summary["steps"]["features"] = _step(fill, log, env, timeout=FEATURES_TIMEOUT_S)
    bench = [sys.executable, "-m", "study.bench", *shlex.split(plan["bench_args"]), "--json", str(prep / "bench.json")]
    summary["steps"]["bench"] = _step(bench, log, env, timeout=BENCH_TIMEOUT_S)
    if (prep / "bench.json").is_file():
        shutil.copy2(prep / "bench.json", out / "bench.json")
    summary["seconds"] = round(time.perf_counter() - started, 1)
    _write_json(out / "features.json", summary)
    failed = [name for name, step in summary["steps"].items() if step["status"] != 0]
    print(f"command 1: {summary['seconds']:.0f} s; " + (f"FAILED: {failed}" if failed else "every step ok"))
    return 1 if failed else 0


def _step(command: list[str], log: Path, env: dict, timeout: float | None = None) -> dict:
    status, seconds = _run_logged(command, log, env, timeout)
    return {"command": shlex.join(command), "status": status, "seconds": round(seconds, 1)}


def datasets_present(prep: Path) -> set[str]:
    """The prepared datasets whose every file is in place (command 1 carries some of them)."""
    files = json.loads((prep / "manifest.json").read_text())["files"]
    missing = {Path(row["path"]).parts[1] for row in files if not (prep / row["path"]).is_file()}
    return {Path(row["path"]).parts[1] for row in files} - missing


def fill_cache(prep: Path) -> None:
    """Features of every recording command 1 carried, through the trials' own prepare_data."""
    from .config import load_space
    from .trial_data import prepare_data

    plan = json.loads((prep / "plan.json").read_text())
    configs = load_space(plan["space"], plan["scale"]).trial_configs(plan["overrides"])
    present = datasets_present(prep)
    trial = configs[0]
    evals = [spec for spec in trial.data.eval_sets if spec.split(":")[0] in present]
    started = time.perf_counter()
    data = prepare_data(trial.with_settings({"data.eval_sets": evals}), prep / "data")
    splits = [data.train, data.val, *data.evals.values()]
    print(
        f"feature cache filled: {sum(s.n_items for s in splits)} recordings "
        f"({', '.join(f'{s.name} {s.n_items}' for s in splits)}), {data.nbytes / 2**20:.0f} MiB of features, "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )


def wave_resources(n_trials: int, bench: dict | None, cpus: int) -> float:
    """GPUs per trial for a wave of ``n_trials``: all of them at once where the GPU's memory (the
    bench's peak per trial) and the CPUs (one per trial, one left for the driver) allow."""
    fit = max(1, min(n_trials, cpus - 1))
    if bench and bench.get("sharing"):
        fit = min(fit, max(1, int(bench["sharing"]["trials_fit_memory"])))
    return math.floor(1000 / fit) / 1000


def device_study(prep: Path, out: Path, deadline_s: float, gpus_per_trial: float | None = None) -> int:
    """Command 2: unpack Ray, run the study's seed waves while they fit ``deadline_s``, pack the results."""
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    plan = json.loads((prep / "plan.json").read_text())
    log = out / "study.log"
    record = {"environment": _environment(), "deadline_s": deadline_s, "waves": []}
    record["checked_files"] = verify_manifest(prep, present_only=False)
    if (prep / "ray.tar.xz").is_file() and not (prep / "ray" / "ray").is_dir():
        unpack_started = time.monotonic()
        with tarfile.open(prep / "ray.tar.xz") as archive:
            archive.extractall(prep / "ray", filter="data")
        record["ray_unpack_s"] = round(time.monotonic() - unpack_started, 1)
    env = _child_env(prep)
    sys.path[:0] = env["PYTHONPATH"].split(os.pathsep)  # the space's checks import the carried audio stack
    storage = _memory_storage(env)
    record["storage"] = storage or "the study folder's tune/ on disk"
    bench = json.loads((prep / "bench.json").read_text()) if (prep / "bench.json").is_file() else None
    study_dir = prep / "study"
    reserve_s = 30.0  # packing the results and returning
    seeds_done: list[int] = []
    last = None  # (trials, seconds) of the last wave
    for number, wave in enumerate(plan["waves"], start=1):
        trials = len(wave) * _trials_per_seed(plan)
        left = deadline_s - (time.monotonic() - started) - reserve_s
        if last is not None:
            predicted = last[1] * max(1.0, trials / last[0]) * 1.2
            if predicted > left:
                record["waves"].append(
                    {"wave": number, "seeds": wave, "skipped": f"predicted {predicted:.0f} s, {left:.0f} s left"}
                )
                break
        gpus = gpus_per_trial if gpus_per_trial is not None else wave_resources(trials, bench, os.cpu_count() or 1)
        seeds = seeds_done + wave
        command = [sys.executable, "-m", "study.run", "--space", plan["space"], "--scale", plan["scale"]]
        command += ["--data-root", str(prep / "data"), "--out", str(study_dir), "--no-report"]
        command += ["--gpus-per-trial", str(gpus), "--set", f"seed=[{','.join(map(str, seeds))}]"]
        command += [arg for key, value in plan["overrides"].items() for arg in ("--set", f"{key}={json.dumps(value)}")]
        if storage:
            command += ["--storage", storage]
        if seeds_done:
            command.append("--extend")
        step = _step(command, log, env, timeout=max(left, 1.0))
        record["waves"].append({"wave": number, "seeds": wave, "trials": trials, "gpus_per_trial": gpus, **step})
        _write_json(out / "study-run.json", record)
        if step["status"] != 0:
            # the trials this wave finished before the deadline are in Tune's storage: keep them
            harvest = [sys.executable, "-m", "study.gpu", "device", "harvest", str(prep)]
            record["waves"][-1]["harvest"] = _step(harvest, log, env, timeout=60)
            break
        seeds_done, last = seeds, (trials, step["seconds"])
    record["seeds"] = seeds_done
    if (study_dir / STUDY_FILE).is_file():
        record["packed_bytes"] = pack_study(study_dir, out / STUDY_TAR)
    record["seconds"] = round(time.monotonic() - started, 1)
    _write_json(out / "study-run.json", record)
    print(f"command 2: {record['seconds']:.0f} s; seeds finished: {seeds_done}")
    return 0 if seeds_done else 1


def _memory_storage(env: dict, min_free: float = 32 * 2**30) -> str | None:
    """Tune's storage and the trials' temporary files in shared memory where it is large: every trial
    writes a checkpoint of about 40 MB (weights, AdamW state, best weights) every epoch, which a
    virtual disk would make the bottleneck. Sets TMPDIR in ``env`` (Ray's own files stay in /tmp);
    returns the storage path, or None to keep the default."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shutil.disk_usage(shm).free < min_free:
        return None
    (shm / "audiofuse-tmp").mkdir(exist_ok=True)
    env.update(TMPDIR=str(shm / "audiofuse-tmp"), RAY_TMPDIR="/tmp")
    return str(shm / "audiofuse-tune")


def _trials_per_seed(plan: dict) -> int:
    """Trials of one seed: the space's grid points besides the seed, with the plan's overrides."""
    from .config import load_space

    configs = load_space(plan["space"], plan["scale"]).trial_configs({**plan["overrides"], "seed": [0]})
    return len(configs)


def pack_study(study_dir: Path, target: Path) -> int:
    """The study folder as tar.gz without what can be rebuilt or is too big to send back: trials'
    checkpoint.pt (the weights) and Tune's experiment folder."""

    def keep(info: tarfile.TarInfo):
        parts = Path(info.name).parts
        if len(parts) > 1 and parts[1] == TUNE_DIR or parts[-1] == CHECKPOINT_FILE or parts[-1].endswith(".lock"):
            return None
        return info

    with tarfile.open(target, "w:gz") as tar:
        tar.add(study_dir, arcname="study", filter=keep)
    return target.stat().st_size


# ---------------------------------------------------------------- back here


def collect(features_dir: Path, study_dir: Path, dest: Path, prep: Path | None = None, report: bool = True) -> dict:
    """What the two commands returned → a study folder ``dest`` (trials.parquet, predictions.parquet,
    study.json, trials/), the bench's figures in ``dest/bench/``, COMMANDS.md, and the report."""
    archive = study_dir / STUDY_TAR
    if not archive.is_file():
        raise PrepareError(f"{archive}: missing; command 2 finished no wave (see {study_dir / 'study.log'})")
    if dest.exists() and any(dest.iterdir()):
        raise PrepareError(f"{dest} is not empty; collect into a new folder")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest.parent / f".{dest.name}.unpack", filter="data")
    unpacked = dest.parent / f".{dest.name}.unpack" / "study"
    for path in unpacked.iterdir():
        shutil.move(str(path), dest / path.name)
    shutil.rmtree(dest.parent / f".{dest.name}.unpack")
    bench_dir = dest / "bench"
    bench_dir.mkdir()
    for name in ("bench.json", "features.json", "features.log"):
        if (features_dir / name).is_file():
            shutil.copy2(features_dir / name, bench_dir / name)
    for name in ("study-run.json", "study.log"):
        if (study_dir / name).is_file():
            shutil.copy2(study_dir / name, dest / name)
    plan = json.loads((prep / "plan.json").read_text()) if prep and (prep / "plan.json").is_file() else None
    state = read_state(dest)
    if plan and not state.get("code", {}).get("commit"):  # the machine has no .git: the commit it was prepared at
        state["code"] = {**plan["code"], "note": "commit recorded when the run was prepared"}
        write_state(dest, state)
    summary = {"out": str(dest)}
    if report:  # as the user would run it: study never imports the analysis (only study.run and study.evaluate)
        subprocess.run([sys.executable, "-m", "analysis", "report", str(dest)], check=True, stdout=subprocess.DEVNULL)
        summary["report"] = str(dest / REPORT_FILE)
    return summary


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.gpu", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="build the prepared run in PREP (an ignored folder of the repository)")
    p.add_argument("prep")
    p.add_argument("--data-root", required=True, help="folder with physionet2016/ and pascal/ in the loaders' layouts")
    p.add_argument("--space", default="branches")
    p.add_argument("--scale", default="paper")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    p.add_argument("--waves", default=None, help="seed waves, e.g. '0,1,2;3,4;5,6,7,8,9' (default: 3, 2, the rest)")
    p.add_argument(
        "--bench-args", default=DEFAULT_BENCH_ARGS, help=f"study.bench arguments (default {DEFAULT_BENCH_ARGS!r})"
    )
    p.add_argument("--local", action="store_true", help="for this machine's Python: no wheels, no Ray archive")
    p.add_argument("--downloads", default=None, help="where downloaded wheels are kept (default: the project cache)")
    p.add_argument("--limit-mib", type=float, default=LIMIT_BYTES / 2**20, help="bytes one command may send, MiB")
    d = sub.add_parser("device", help="a command on the GPU machine")
    d.add_argument("step", choices=["features", "study", "fill-cache", "harvest"])
    d.add_argument("prep")
    d.add_argument("--out", default=None, help="where the returned files go ($OUT)")
    d.add_argument("--deadline", type=float, default=480.0, help="seconds command 2 may take")
    d.add_argument("--gpus-per-trial", type=float, default=None, help="instead of the wave's share of the GPU")
    c = sub.add_parser("collect", help="turn the returned files into a study folder with its report")
    c.add_argument("--features", required=True, help="the files command 1 returned")
    c.add_argument("--study", required=True, help="the files command 2 returned")
    c.add_argument("--out", required=True, help="the new study folder")
    c.add_argument("--prep", default=None, help="the prepared folder (for the commit it was prepared at)")
    c.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            from .config import parse_settings

            plan = prepare(
                Path(args.prep),
                Path(args.data_root),
                space_name=args.space,
                scale=args.scale,
                overrides=parse_settings(args.set),
                waves=parse_waves(args.waves) if args.waves else None,
                bench_args=args.bench_args,
                local=args.local,
                downloads=Path(args.downloads) if args.downloads else None,
                limit=int(args.limit_mib * 2**20),
            )
            print(format_plan(plan))
            return 0
        if args.command == "device":
            prep = Path(args.prep)
            if args.step == "fill-cache":
                fill_cache(prep)
                return 0
            if args.step == "harvest":
                from .state import harvest_finished

                installed = harvest_finished(prep / "study")
                print(f"harvested {len(installed)} finished trial(s) from Tune's storage: {installed}")
                return 0
            if not args.out:
                parser.error("device features|study need --out")
            if args.step == "features":
                return device_features(prep, Path(args.out))
            return device_study(prep, Path(args.out), args.deadline, args.gpus_per_trial)
        summary = collect(
            Path(args.features),
            Path(args.study),
            Path(args.out),
            Path(args.prep) if args.prep else None,
            report=not args.no_report,
        )
        print(f"collected: {summary['out']}" + (f"; report {summary['report']}" if "report" in summary else ""))
        return 0
    except (PrepareError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
