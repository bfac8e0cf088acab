"""The search block of a space: searchers, schedulers and conditional parameters as Optuna and Ray Tune
take them, and the combinations that cannot run refused in one line before any trial."""

from __future__ import annotations

import optuna
import pytest
import yaml

from study.config import SPACES_DIR, SpaceError, load_space
from study.plan import build_plan
from study.search import OptunaSpace, check_search, optuna_searcher, sample_count, scheduler_of

BASE = load_space("hpo").trial_configs()[0]
PARAMS = {
    "train.lr": {"type": "loguniform", "low": 1e-5, "high": 3e-3},
    "model.fusion": {"type": "choice", "values": ["concat", "cross_attention"]},
    "model.fusion_heads": {"type": "choice", "values": [1, 2], "when": {"model.fusion": "cross_attention"}},
}


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"searcher": "bohb"}, "search.searcher must be one of ['tpe', 'random', 'grid', 'cmaes', 'qmc'], got 'bohb'"),
        ({"scheduler": "pbt"}, "search.scheduler must be one of ['asha', 'hyperband', 'median', 'fifo']"),
        ({"searcher": "grid"}, "the grid searcher needs a finite set of values, but train.lr is loguniform"),
        ({"metric": "kept_val_accuracy"}, "search.metric 'kept_val_accuracy' is not reported by the trials, which"),
        ({"metric": "pascal/roc_auc"}, "(train.monitor is 'roc_auc')"),
        ({"scheduler": "fifo", "grace_period": 2}, "search.grace_period applies to the asha and median scheduler(s)"),
        ({"scheduler": "median", "reduction_factor": 2}, "search.reduction_factor applies to the asha and hyperband"),
        ({"searcher": "cmaes"}, "CMA-ES samples numeric parameters only, in one fixed space; model.fusion is a choice"),
        ({"grace_period": 12}, "search.grace_period (12) must be below train.max_epochs (12)"),
        ({"mode": "max", "num_samples": 0}, "search.num_samples must be a positive integer, got 0"),
    ],
)
def test_combinations_that_cannot_run_are_refused_in_one_line(search, message):
    with pytest.raises(SpaceError) as error:
        check_search({"params": PARAMS, **search}, "space.yaml", BASE)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"model.fusion": {"type": "choice", "values": ["gated"]}}, "fusion must be one of"),
        ({"model.wave_filters": {"type": "choice", "values": [[8, 16]]}}, "Optuna chooses among numbers, strings"),
        ({"train.lr": {"type": "loguniform", "low": 0, "high": 1}}, "needs low < high and low > 0"),
        (
            {"train.lr": {"type": "uniform", "low": 0.1}},
            "a uniform parameter needs type and ['high', 'low'], and may have when",
        ),
        ({"model.dropout": {**PARAMS["train.lr"], "when": "model.fusion"}}, "when must map parameters listed before"),
        (
            {"model.fusion_heads": PARAMS["model.fusion_heads"], "model.fusion": PARAMS["model.fusion"]},
            "when names 'model.fusion', which is not a searched parameter listed before model.fusion_heads",
        ),
        (
            {
                "model.fusion": PARAMS["model.fusion"],
                "model.dropout": {**PARAMS["train.lr"], "when": {"model.fusion": "film"}},
            },
            "when model.fusion is ['film'], but model.fusion takes only ['concat', 'cross_attention']",
        ),
    ],
)
def test_bad_parameters_are_refused_with_their_key(params, message):
    with pytest.raises(SpaceError, match="search.params.") as error:
        check_search({"params": params}, "space.yaml", BASE)
    assert message in str(error.value)


def test_a_grid_over_choices_and_integers_runs_every_combination_once():
    grid = {"searcher": "grid", "params": {"model.vit_depth": {"type": "randint", "low": 1, "high": 3}, **PARAMS}}
    grid["params"] = {k: v for k, v in grid["params"].items() if k != "train.lr" and "when" not in v}
    check_search(grid, "space.yaml", BASE)
    assert sample_count(grid) == 4
    with pytest.raises(SpaceError, match=r"runs every combination \(4\); search.num_samples 8 would differ"):
        check_search({**grid, "num_samples": 8}, "space.yaml", BASE)
    searcher = optuna_searcher(grid, seed=0, storage_url="sqlite:///:memory:", study_name="grid")
    searcher.set_search_properties(None, None, {})
    suggested = [searcher.suggest(f"t{i}") for i in range(4)]
    assert sorted((s["model.vit_depth"], s["model.fusion"]) for s in suggested) == [
        (1, "concat"),
        (1, "cross_attention"),
        (2, "concat"),
        (2, "cross_attention"),
    ]


def test_a_conditional_parameter_is_sampled_only_when_its_condition_holds():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = OptunaSpace(PARAMS)
    seen = []
    for _ in range(12):
        trial = study.ask()
        space(trial)
        seen.append(trial.params)
        study.tell(trial, 0.5)
    assert {p["model.fusion"] for p in seen} == {"concat", "cross_attention"}
    for params in seen:
        assert ("model.fusion_heads" in params) == (params["model.fusion"] == "cross_attention")


@pytest.mark.parametrize("name", ["asha", "hyperband", "median", "fifo"])
def test_every_scheduler_counts_epochs_and_lets_a_full_trial_end_by_itself(name):
    scheduler = scheduler_of({"scheduler": name, "metric": "kept_val_roc_auc", "mode": "max"}, max_epochs=12)
    assert (
        type(scheduler).__name__
        == {
            "asha": "AsyncHyperBandScheduler",
            "hyperband": "HyperBandScheduler",
            "median": "MedianStoppingRule",
            "fifo": "FIFOScheduler",
        }[name]
    )
    if name != "fifo":
        assert scheduler._time_attr == "epoch" and scheduler._metric == "kept_val_roc_auc"
    if name in ("asha", "hyperband"):  # the last epoch's report and the final one both count 12
        assert (scheduler._max_t if name == "asha" else scheduler._max_t_attr) == 13


def test_the_built_in_hpo_space_is_valid_and_a_bad_one_fails_in_the_dry_run_before_any_data(tmp_path):
    assert load_space("hpo").search["params"]["train.lr"]["type"] == "loguniform"
    raw = yaml.safe_load((SPACES_DIR / "hpo.yaml").read_text())
    raw["search"]["searcher"] = "grid"
    path = tmp_path / "hpo.yaml"
    path.write_text(yaml.safe_dump(raw))
    space = load_space(path)  # loading checks the block's keys and settings; the search needs the trial configs
    with pytest.raises(SpaceError, match=r"hpo.yaml \(search\): the grid searcher needs a finite set of values"):
        build_plan(space, overrides=None, data_root=tmp_path / "no data", resources={"cpu": 1, "gpu": 0})
