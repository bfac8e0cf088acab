"""The positive control: on synthetic data whose abnormal recordings each carry one cue that only one
branch sees well, the `branches` study must find AudioFuse significantly ahead of each single branch.

A study that cannot find a planted effect cannot be trusted to report a real one missing; this is
the end-to-end check of generator, training recipe, statistics and report together. It trains nine
CPU-scale models on 958 recordings (about 11 minutes here), so it is marked slow.
"""

from __future__ import annotations

import pandas as pd
import pytest

from study.config import load_space
from study.data.synth import write_synthetic
from study.run import run_study

pytestmark = pytest.mark.slow

# The positive control's data sizes and recipe (docs/results.md, "The positive control").
SIZES = dict(physionet=1300, physionet_test=300, pascal=430, icbhi=12)
RECIPE = {"train.lr": 3e-4, "train.max_epochs": 30, "train.patience": 30, "train.branch_loss_weight": 1.0}


def test_branches_study_finds_fusion_significantly_ahead_of_each_branch(tmp_path):
    root = tmp_path / "data"
    write_synthetic(root, seed=0, preset="positive_control", **SIZES)
    out = tmp_path / "branches"
    summary = run_study(load_space("branches"), out=out, data_root=root, overrides=RECIPE, verbose=0)
    assert summary["failed"] == 0 and summary["trials"] == 9

    claims = pd.read_csv(out / "tables" / "claims.csv")
    physionet = claims[claims["claim"] == "fusion_beats_branches_physionet"].set_index("loser")
    assert sorted(physionet.index) == ["spectrogram", "waveform"]
    for loser, row in physionet.iterrows():
        assert row["winner"] == "fusion" and row["part"].startswith("holds"), (loser, row.to_dict())
        assert row["low"] > 0 and row["p"] < 0.05, (loser, row.to_dict())
    # the control pre-specifies this one claim, so its own intersection-union p is the test; Holm across the
    # space's claims (PASCAL's too) is the report's family, and at +0.02-0.03 over the waveform model on 300
    # recordings it holds on some CPUs (claim p 0.038) and not on others (0.080): docs/results.md
    assert (physionet["claim_p"] < 0.05).all(), physionet["claim_p"].to_dict()
    (verdict,) = physionet["claim_verdict"].unique()  # one verdict per claim, on each of its rows
    assert verdict in ("holds", "not resolved after Holm over 2 claims"), verdict
    # the planted design: gallops are the waveform branch's alone (tables/per_cue)
    cues = pd.read_csv(out / "tables" / "per_cue.csv").set_index(["eval_set", "cue", "configuration"])
    for gallop in ("extra_sound_s3", "extra_sound_s4"):
        spectrogram = cues.loc[("physionet2016:test", gallop, "spectrogram")]
        waveform = cues.loc[("physionet2016:test", gallop, "waveform")]
        # the spectrogram model is at chance on gallops (its interval covers 0.5), the waveform model well above
        assert spectrogram["roc_auc_low"] <= 0.5 <= spectrogram["roc_auc_high"], gallop
        assert waveform["roc_auc_low"] > 0.5 and waveform["roc_auc"] > spectrogram["roc_auc"] + 0.2, gallop
    report = (out / "report.md").read_text()
    assert f"AudioFuse beats each single branch on the PhysioNet 2016 test ROC-AUC | {verdict}" in report
