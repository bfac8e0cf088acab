"""The prepared GPU run (study.gpu): built and run here with this machine's Python, on a tiny subset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf

from study.data import load_dataset
from study.gpu import (
    LIMIT_BYTES,
    PrepareError,
    build_ray_archive,
    parse_waves,
    plan_calls,
    prepare,
    repository_bytes,
)

REPO = Path(__file__).resolve().parents[1]
# paper profile and recipe, with tiny models and few recordings: what the GPU runs, at CPU cost
TINY = {
    "data.max_train": 24,
    "data.max_eval": 12,
    "data.validation": "stratified",
    "train.max_epochs": 2,
    "train.batch_size": 8,
    "features.image_size": 32,
    "model.patch_size": 8,
    "model.vit_dim": 16,
    "model.vit_depth": 1,
    "model.vit_heads": 2,
    "model.spec_dense": 8,
    "model.wave_filters": [4, 8, 8],
    "model.wave_dense": 8,
    "model.fusion_dim": 8,
}


def _tree_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_ray_archive_keeps_executables_leaves_out_java_rllib_serve_and_is_reproducible(tmp_path):
    wheel = tmp_path / "ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, mode in [
            ("ray/__init__.py", 0o644),
            ("ray/core/src/ray/gcs/gcs_server", 0o755),
            ("ray/jars/ray_dist.jar", 0o644),
            ("ray/rllib/algorithm.py", 0o644),
            ("ray/serve/api.py", 0o644),
            ("ray-2.60.0.dist-info/METADATA", 0o644),
        ]:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            archive.writestr(info, f"contents of {name}")
    build_ray_archive(wheel, tmp_path / "a.tar.xz")
    build_ray_archive(wheel, tmp_path / "b.tar.xz")
    assert (tmp_path / "a.tar.xz").read_bytes() == (tmp_path / "b.tar.xz").read_bytes()
    with tarfile.open(tmp_path / "a.tar.xz") as tar:
        modes = {m.name: m.mode for m in tar.getmembers()}
    assert sorted(modes) == ["ray-2.60.0.dist-info/METADATA", "ray/__init__.py", "ray/core/src/ray/gcs/gcs_server"]
    assert modes["ray/core/src/ray/gcs/gcs_server"] == 0o755  # Ray's servers must stay executable
    assert modes["ray/__init__.py"] == 0o644


def _fake_prepared(folder: Path, wheels: int, ray: int) -> Path:
    folder.mkdir()
    (folder / "manifest.json").write_bytes(b"{}")
    (folder / "wheels").mkdir()
    (folder / "wheels" / "a.whl").write_bytes(b"w" * wheels)
    (folder / "ray.tar.xz").write_bytes(b"r" * ray)
    return folder


def test_the_two_commands_share_the_data_and_each_stays_within_the_limit(tmp_path):
    mib = 2**20
    prep = _fake_prepared(tmp_path / "prep", wheels=5 * mib, ray=22 * mib)
    units = [("data/pascal/set_a", 18 * mib), ("data/pascal/set_a.csv", 10), ("data/physionet2016", 35 * mib)]
    calls = plan_calls(prep, units, 64 * mib, repo_bytes=7 * mib, local=False)
    first, second = calls
    assert "wheels" in first["carry"] and "ray.tar.xz" in second["carry"]
    assert "data/physionet2016" in first["carry"]
    # a PASCAL set travels with its CSV: the loader needs both in one command
    assert {"data/pascal/set_a", "data/pascal/set_a.csv"} <= set(second["carry"])
    for call in calls:
        assert call["bytes"] == 7 * mib + sum(call["carry_bytes"].values()) <= 64 * mib
    with pytest.raises(PrepareError, match="over the 45 MiB limit"):
        plan_calls(prep, units, 45 * mib, repo_bytes=7 * mib, local=False)


def test_waves_are_parsed_and_checked():
    assert parse_waves("0,1,2;3,4") == [[0, 1, 2], [3, 4]]
    for bad in ("0,1;1", "0;;1", "a"):
        with pytest.raises(PrepareError):
            parse_waves(bad)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from study.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("gpu-data")
    write_synthetic(root, seed=3, physionet=40, pascal=16, datasets=("physionet2016", "pascal"))
    return root


def test_cut_data_loads_as_the_original_with_the_first_window_intact(tiny_data, tmp_path):
    plan = prepare(tmp_path / "prep", tiny_data, overrides=TINY, waves=[[0]], local=True)
    data = tmp_path / "prep" / "data"
    for name, options in (("physionet2016", {}), ("pascal", {"mapping": "paper"})):
        original, cut = load_dataset(name, tiny_data / name, **options), load_dataset(name, data / name, **options)
        columns = ["id", "label", "split", "source", "group", "sample_rate"]
        pd.testing.assert_frame_equal(original.table[columns], cut.table[columns])
        assert (cut.table["duration_s"] <= plan["keep_s"] + 1e-9).all()
        for source, target in zip(original.table["path"], cut.table["path"]):
            kept, rate = sf.read(target, dtype="int16")
            first, _ = sf.read(source, dtype="int16", frames=len(kept))
            assert Path(target).suffix == ".flac" and (kept == first).all()  # lossless: the samples are the source's
    manifest = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    assert len(manifest["files"]) == plan["files"] and plan["local"]


@pytest.mark.slow
def test_prepared_run_rehearsed_on_this_machine(tiny_data, tmp_path):
    """The plan's two commands as they run on the GPU machine, with this Python, no GPU (--gpus-per-trial 0),
    then collect: a study folder with every trial of both seed waves and its report."""
    prep = tmp_path / "prep"
    bench = "--quick --device cpu --sizes cpu --parts sharing --sharing 1,2"
    overrides = {**TINY, "model.architecture": ["waveform", "fusion"]}  # two of the three: half the training
    plan = prepare(prep, tiny_data, overrides=overrides, waves=[[0], [1]], bench_args=bench, local=True)
    for call in plan["calls"]:  # what each command sends: the repository and the carried paths as they are
        assert call["bytes"] == repository_bytes() + sum(call["carry_bytes"].values()) <= LIMIT_BYTES
        sizes = {p: _tree_bytes(prep / p) for p in call["carry_bytes"] if p != "plan.json"}
        assert sizes == {p: b for p, b in call["carry_bytes"].items() if p != "plan.json"}
        assert (prep / "plan.json").stat().st_size <= call["carry_bytes"]["plan.json"]
    outs = [tmp_path / "out1", tmp_path / "out2"]
    for call, out, extra in zip(plan["calls"], outs, ["", " --gpus-per-trial 0 --deadline 900"]):
        command = call["command"].replace("python3", sys.executable, 1).replace(" --deadline 480", "") + extra
        done = subprocess.run(
            ["bash", "-c", command], cwd=REPO, env={**os.environ, "OUT": str(out)}, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = json.loads((outs[1] / "study-run.json").read_text())
    assert [w["status"] for w in run["waves"]] == [0, 0] and run["seeds"] == [0, 1]
    assert [w["trials"] for w in run["waves"]] == [2, 2]
    assert json.loads((outs[0] / "bench.json").read_text())["sharing"]["recommended_trials"] in (1, 2)

    # a driver killed after its trials finished (the deadline) loses nothing: harvest installs them
    study = prep / "study"
    trial_ids = sorted(p.name for p in (study / "trials").iterdir())
    for folder in (study / "trials").iterdir():
        subprocess.run(["rm", "-r", str(folder)], check=True)
    (study / "trials.parquet").unlink()
    done = subprocess.run(
        [sys.executable, "-m", "study.gpu", "device", "harvest", str(prep)], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (study / "trials").iterdir()) == trial_ids
    assert len(pd.read_parquet(study / "trials.parquet")) == 4

    dest = tmp_path / "collected"
    done = subprocess.run(
        [sys.executable, "-m", "study.gpu", "collect", "--features", str(outs[0]), "--study", str(outs[1]),
         "--out", str(dest), "--prep", str(prep)],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    trials = pd.read_parquet(dest / "trials.parquet")
    assert len(trials) == 4 and set(trials["config/seed"]) == {0, 1}
    assert sorted(trials["config/model.architecture"].unique()) == ["fusion", "waveform"]
    assert (dest / "report.md").is_file() and (dest / "bench" / "bench.json").is_file()
    assert not list(dest.glob("trials/*/checkpoint.pt"))  # the weights stay on the machine: too big to send back


@pytest.mark.slow
@pytest.mark.real_data
def test_real_prepared_run_fits_two_commands(real_root, tmp_path):
    """The real PhysioNet and PASCAL, the cp312 wheels and the trimmed Ray, as prepared for the GPU
    machine: both commands within 64 MiB (downloads from PyPI unless AUDIOFUSE_GPU_DOWNLOADS holds them)."""
    downloads = Path(os.environ.get("AUDIOFUSE_GPU_DOWNLOADS", tmp_path / "downloads"))
    plan = prepare(tmp_path / "prep", real_root, downloads=downloads)
    assert plan["files"] == 3834  # 3,240 PhysioNet recordings, 585 labelled PASCAL ones, 9 label files
    for call in plan["calls"]:
        assert call["bytes"] <= LIMIT_BYTES, call
        assert len(call["carry"]) <= 8  # the device tool carries at most 8 paths
    with tarfile.open(tmp_path / "prep" / "ray.tar.xz") as tar:
        names = tar.getnames()
    assert "ray/_raylet.so" in names and not any(n.startswith(("ray/jars/", "ray/rllib/")) for n in names)
