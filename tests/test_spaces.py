"""Every search space runs end to end at a tiny size (the hyperparameter search with its checks:
trials collected stopped early or not, the best configuration chosen on validation and compared with
the default one over seeds in the report), and the paper scale runs at the paper's sizes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from study.config import SPACES_DIR, SpaceError, load_space
from study.run import run_study

pytestmark = pytest.mark.slow

# one seed, a few recordings, one epoch: seconds per trial on this machine's CPUs
TINY = {"seed": 0, "data.max_train": 32, "data.max_eval": 16, "train.max_epochs": 1, "train.patience": 1}
# spaces whose every evaluation recording is costly: 22 kHz windows of every length (input), 14
# perturbed copies of every evaluation set (robustness)
SMALLER = {
    "input": {"data.max_train": 12, "data.max_eval": 6, "data.validation_fraction": 0.05},
    "robustness": {"data.max_eval": 8},
}
SPACES = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def _tiny_hpo(tmp_path: Path) -> Path:
    """The hpo space with a search small enough for a test: 4 samples, ASHA rungs at epochs 1 and 2."""
    raw = yaml.safe_load((SPACES_DIR / "hpo.yaml").read_text())
    raw["search"].update(num_samples=4, grace_period=1, reduction_factor=2)
    raw["scales"]["cpu"]["grid"] = {"seed": [0, 1]}
    path = tmp_path / "hpo.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("name", SPACES)
def test_every_space_runs_end_to_end(name, ray_session, synth_root, tmp_path):
    space = load_space(_tiny_hpo(tmp_path) if name == "hpo" else name)
    overrides = {**TINY, **SMALLER.get(name, {})}
    if name == "hpo":  # the search needs epochs for ASHA to stop trials at; the replication two seeds
        overrides.update({"train.max_epochs": 3, "train.patience": 3})
        del overrides["seed"]
    out = tmp_path / name
    summary = run_study(space, out=out, data_root=synth_root, overrides=overrides, verbose=0)
    assert summary["failed"] == 0 and summary["trials"] >= 1
    trials = pd.read_parquet(out / "trials.parquet")
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert set(predictions["trial_id"]) == set(trials["trial_id"])
    assert (out / "report.md").is_file() and (out / "tables").is_dir()
    assert (trials["device"] == "cpu").all() and trials["precision"].eq("fp32").all()
    if name == "recipe":  # padding is an evaluation-time variant, not a training axis
        assert "config/features.padding" not in trials or trials["config/features.padding"].nunique() == 1
        assert {"pascal", "pascal[padding=cyclic]"} <= set(predictions["eval_set"])
        assert "pascal[padding=cyclic]" in (out / "tables" / "intervals.md").read_text()
    if name == "robustness":
        assert (predictions["perturbation"] != "none").any()
    if name == "hpo":
        _check_search(out, summary, trials, max_epochs=3)
        again = run_study(space, out=out, data_root=synth_root, overrides=overrides, resume=True, verbose=0)
        assert again["trained"] == 0  # resuming a finished search trains nothing


def _check_search(out: Path, summary: dict, trials: pd.DataFrame, max_epochs: int) -> None:
    """Every search trial collected (ASHA-stopped ones too, with their kept weights evaluated), the
    best chosen on validation, and best vs default replicated over two seeds in the report."""
    search = pd.read_parquet(out / "search" / "trials.parquet")
    assert len(search) == summary["search"]["trials"] == 4
    assert summary["search"]["stopped_early"] == int(search["stopped_early"].sum()) >= 1
    assert (search.loc[search["stopped_early"], "epochs"] < max_epochs).all()
    for _, row in search.iterrows():  # evaluated with the weights it kept
        assert row["val/roc_auc"] == pytest.approx(row["kept_val_roc_auc"])
        assert row["pascal/roc_auc"] == row["pascal/roc_auc"]  # not NaN: evaluated
    best = search.loc[search["kept_val_roc_auc"].idxmax()]
    state = json.loads((out / "study.json").read_text())
    assert state["search"]["best"]["trial_id"] == best["trial_id"]
    for key, value in state["search"]["best"]["params"].items():
        assert best[f"config/{key}"] == pytest.approx(value)
    assert sorted(trials["config/recipe"]) == ["best", "best", "default", "default"]
    assert sorted(trials["config/seed"]) == [0, 0, 1, 1]
    comparisons = pd.read_csv(out / "tables" / "comparisons.csv")
    assert comparisons.astype(str).apply(lambda column: column.str.contains("best")).any().any()
    report = (out / "report.md").read_text()
    assert "## Hyperparameter search" in report and best["trial_id"] in report


def test_paper_scale_end_to_end_on_a_tiny_subset(ray_session, synth_root, tmp_path):
    """The real paper profile (22,050 Hz, 224x224 images, 110,250-sample waveforms) and the paper's
    model sizes (ViT 224/16 depth 6, CNN 64/128/256), one epoch on a few dozen recordings, through
    Ray (asking for no GPU here), into trials.parquet, predictions.parquet and the report."""
    started = time.perf_counter()
    space = load_space("branches", "paper")
    out = tmp_path / "paper"
    overrides = {"seed": 0, "data.max_train": 24, "data.max_eval": 12, "train.max_epochs": 1, "train.patience": 1}
    summary = run_study(space, out=out, data_root=synth_root, overrides=overrides, resources={"gpu": 0}, verbose=0)
    seconds = time.perf_counter() - started
    assert summary["failed"] == 0 and summary["trials"] == 3
    trials = pd.read_parquet(out / "trials.parquet")
    assert set(trials["config/features.profile"]) == {"paper"}
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert {"physionet2016:test", "pascal"} <= set(predictions["eval_set"])
    checkpoint = next((out / "trials").glob("*/checkpoint.pt"))
    from study.evaluate import load_checkpoint, load_model
    from study.models import count_parameters

    model = load_model(load_checkpoint(checkpoint.parent))
    expected = {"fusion": 2_630_273, "spectrogram": 1_906_753, "waveform": 674_241}
    assert count_parameters(model)["total"] == expected[model.config.architecture]
    assert (out / "report.md").is_file()
    print(f"paper scale, 3 trials end to end: {seconds:.1f} s")


def test_set_on_a_grid_axis_replaces_the_axis_and_a_bad_seed_is_refused_before_any_trial():
    space = load_space("branches")
    configs = space.trial_configs({"seed": [0, 1, 2, 3, 4]})
    assert len(configs) == 15 and sorted({c.seed for c in configs}) == [0, 1, 2, 3, 4]
    assert {c.seed for c in space.trial_configs({"seed": 7})} == {7}
    with pytest.raises(SpaceError, match="seed must be a non-negative integer, got 0.5"):
        space.trial_configs({"seed": [0.5]})


def test_features_larger_than_the_object_store_end_in_one_line_before_any_trial(
    ray_session, synth_root, tmp_path, capsys, monkeypatch
):
    from study import run as run_module
    from study import tuners

    monkeypatch.setattr(tuners, "object_store_capacity", lambda: 2**20)
    out = tmp_path / "smoke"
    argv = ["--space", "smoke", "--out", str(out), "--data-root", str(synth_root), "--verbose", "0"]
    assert run_module.main(argv) == 2
    error = capsys.readouterr().err.rstrip("\n").split("\n")[-1]
    assert error.startswith("error: the features need ") and "more than the 1.0 MB of this driver's node" in error
    assert "--set data.max_train=N" in error and "--object-store-memory" in error
    assert sorted(p.name for p in out.iterdir()) == []  # no study state, no trial, and the lock released
