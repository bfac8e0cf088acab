"""The worker side of a study: the Ray Tune trainable that runs one trial, and the Ray task that
finishes a trial a scheduler stopped. Both write the trial's files (:mod:`study.results`) into the
checkpoint they hand back to the driver, so a worker node needs no shared folder with it."""

from __future__ import annotations

import io
import platform
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray import tune

from .cluster import ClusterError, storage_error
from .config import TrialConfig, data_key_of, trial_id_of
from .registry import load_plugins
from .results import FINAL_DIR, STATE_FILE, flatten_metrics, trial_files, write_run_record, write_trial
from .tracking import TRACKABLE_NAME
from .train import finish_from_state, train_and_evaluate

__all__ = ["trainable", "finish_stopped_trial"]


def trainable(config: dict, data_refs: dict, storage: str, plugins: list[str], ids: str) -> None:
    """Ray Tune function trainable: one trial, resumable from its last checkpoint.

    ``config`` holds the trial's settings flat, by their names (``model.fusion``, ``train.lr``), as
    Tune and its trackers show them. ``ids`` names the trial: ``"config"`` by its settings
    (:func:`study.config.trial_id_of`, a grid point), ``"tune"`` by Tune's id (a search's sample).
    """

    load_plugins(plugins)  # this worker builds their models and reads their names too
    started_at = time.time()
    config = dict(config)
    trial_id = trial_id_of(config) if ids == "config" else tune.get_context().get_trial_id()
    data = ray.get(data_refs[data_key_of(config)])
    checkpoint = tune.get_checkpoint()
    resume_state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            if (Path(folder) / STATE_FILE).is_file():
                resume_state = torch.load(Path(folder) / STATE_FILE, weights_only=False)

    def report(row, get_state):
        with tempfile.TemporaryDirectory() as folder:
            torch.save(get_state(), Path(folder) / STATE_FILE)
            _report_to(storage, row, folder)

    gpu_assigned = bool(ray.get_gpu_ids())
    trial = TrialConfig.from_flat(config)
    result = train_and_evaluate(
        trial, data, trial_id=trial_id, report=report, resume_state=resume_state, gpu_assigned=gpu_assigned
    )
    with tempfile.TemporaryDirectory() as folder:
        final = Path(folder) / FINAL_DIR
        write_trial(final, trial, result, data.info, trial_id)
        record = {"trial_id": trial_id, **_node(), "resumed_at": result.resumed_at}
        write_run_record(final, {**record, "started_at": started_at, "finished_at": time.time()})
        # the full metrics travel in the checkpoint's files; Tune and the trackers get those of the clean
        # evaluation sets at the validation-chosen threshold, the names every tracker accepts
        final = {k: v for k, v in flatten_metrics(result.metrics).items() if TRACKABLE_NAME.fullmatch(k)}
        last_epoch = result.history[-1] if result.history else {}
        _report_to(
            storage,
            {**last_epoch, "done": True, "study_trial_id": trial_id, "wall_time_s": result.wall_time_s, **final},
            folder,
        )


def finish_stopped_trial(
    config: dict, data, state_bytes: bytes, trial_id: str, plugins: list[str]
) -> tuple[dict, bool]:
    """Ray task: evaluate a stopped trial's kept weights; returns its files (name → bytes) and whether it
    stopped early (fewer epochs than train.max_epochs, and not by its own early stopping)."""

    load_plugins(plugins)
    state = torch.load(io.BytesIO(state_bytes), weights_only=False)
    trial = TrialConfig.from_flat(config)
    result = finish_from_state(trial, data, state, trial_id=trial_id, gpu_assigned=bool(ray.get_gpu_ids()))
    early = result.epochs < trial.train.max_epochs and state["since_best"] < trial.train.patience
    with tempfile.TemporaryDirectory() as folder:
        write_trial(Path(folder), trial, result, data.info, trial_id)
        record = {"trial_id": trial_id, **_node(), "resumed_at": result.resumed_at, "stopped_early": early}
        write_run_record(Path(folder), record)
        return trial_files(Path(folder)), early


def _node() -> dict:
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "hostname": platform.node(),
    }


def _report_to(storage: str, row: dict, folder: str) -> None:
    """tune.report with the checkpoint in ``folder``, which Tune uploads to ``storage`` from this
    worker: a node that cannot write there fails in one line naming it, not with pyarrow's traceback."""
    try:
        tune.report(row, checkpoint=tune.Checkpoint.from_directory(folder))
    except OSError as error:  # pyarrow's file-system errors
        where = f"node {ray.util.get_node_ip_address()} ({ray.get_runtime_context().get_node_id()[:8]})"
        raise ClusterError(storage_error(storage, where, f"{type(error).__name__}: {error}".splitlines()[0])) from None
