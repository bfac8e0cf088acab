"""Trial ids stay valid: the committed reference studies' grids, rebuilt from today's search spaces
with the overrides each study.json records, give back exactly the trial ids those studies hold, so
resuming or extending an old study finds its finished trials."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from study.config import load_space

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference"
STUDIES = sorted(p.parent.name for p in REFERENCE.glob("*/trials.parquet"))


def test_every_reference_study_with_trials_is_checked():
    assert {"branches", "fusion", "positive_control", "robustness"} <= set(STUDIES)


@pytest.mark.parametrize("name", STUDIES)
def test_reference_trial_ids_are_reproduced_by_todays_space(name):
    space = json.loads((REFERENCE / name / "study.json").read_text())["space"]
    configs = load_space(space["name"]).trial_configs(space["overrides"])
    stored = pd.read_parquet(REFERENCE / name / "trials.parquet", columns=["trial_id"])["trial_id"]
    assert sorted(c.trial_id for c in configs) == sorted(stored)
