"""Tracking a study in the tools labs already keep their runs in: TensorBoard, MLflow, Weights & Biases.

``python -m study.run --track tensorboard|mlflow|wandb`` (repeatable) adds Ray Tune's own logger
callbacks to every Tune experiment of the study (:func:`tracker_callbacks`): each trial becomes a
run with its settings (flat: ``model.fusion``, ``train.lr``), its per-epoch metrics and its final
metrics per evaluation set. When the study's report is written, :func:`log_report` adds the
report (``report.md``, ``tables/``, the claims and notes) to each tracker as one more run.

Where each tracker writes, as each tool's own settings say:

* tensorboard: Tune's ``TBXLoggerCallback``, event files beside each trial in the Tune storage
  (``OUT/tune``; Tune writes them even without ``--track``), the report under ``OUT/tune/report``.
* mlflow: ``MLflowLoggerCallback`` to ``$MLFLOW_TRACKING_URI``, by default the SQLite store
  ``OUT/mlflow.db`` with artifacts in ``OUT/mlartifacts``; experiment ``$MLFLOW_EXPERIMENT_NAME``
  or the space's name.
* wandb: ``WandbLoggerCallback`` to project ``$WANDB_PROJECT`` or the space's name, files under
  ``OUT/wandb``; ``WANDB_MODE=offline`` keeps everything there (``wandb sync`` uploads it later).

Metric names reach the trackers as the trials report them (``pascal/roc_auc``); the final metrics
are the ones every tracker accepts (MLflow's rule is the strictest): a clean evaluation set's
metrics at the validation-chosen threshold. The rest is in ``trials.parquet``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

from .results import REPORT_FILE, TABLES_DIR

__all__ = ["TRACKABLE_NAME", "TRACKERS", "check_trackers", "log_report", "tracker_callbacks"]

TRACKERS = ("tensorboard", "mlflow", "wandb")
_PACKAGES = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}
#: metric names MLflow accepts (alphanumerics, _ - . space : /), and so every tracker here
TRACKABLE_NAME = re.compile(r"[\w\-. :/]+")
REPORT_RUN = "report"


def check_trackers(names: list[str]) -> list[str]:
    """The ``--track`` names, each once, in order; ValueError in one line for an unknown one or a missing package."""
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"--track must be one of {list(TRACKERS)}, got {name!r}")
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            raise ValueError(
                f"--track {name} needs the {_PACKAGES[name]} package: pip install -c constraints.txt -e '.[track]'"
            )
    return list(dict.fromkeys(names))


def _mlflow_target(out: Path, space_name: str) -> tuple[str, str, bool]:
    """(tracking URI, experiment name, whether the store is the study's own default one)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or space_name
    return uri or f"sqlite:///{out.resolve()}/mlflow.db", experiment, uri is None


def _mlflow_experiment_id(out: Path, space_name: str) -> tuple[str, str]:
    """(tracking URI, experiment id), the experiment created first when missing: in the study's own store with
    its artifacts in OUT/mlartifacts (MLflow would put them under the current folder)."""
    from mlflow.tracking import MlflowClient

    uri, name, own_store = _mlflow_target(out, space_name)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return uri, experiment.experiment_id
    location = (out.resolve() / "mlartifacts").as_uri() if own_store else None
    return uri, client.create_experiment(name, artifact_location=location)


def _wandb_settings(out: Path, space_name: str) -> dict:
    """wandb.init's project, folder and mode: the environment's (WANDB_PROJECT, WANDB_MODE) where set.
    Passed explicitly because Tune's logging actors run in Ray worker processes."""
    settings = {"project": os.environ.get("WANDB_PROJECT") or space_name, "dir": str(out.resolve())}
    if os.environ.get("WANDB_MODE"):
        settings["mode"] = os.environ["WANDB_MODE"]
    return settings


def tracker_callbacks(names: list[str], out: Path, space_name: str, experiment: str) -> list:
    """Ray Tune logger callbacks for the ``--track`` names, for the Tune experiment ``experiment`` of the study in ``out``."""
    callbacks = []
    if "tensorboard" in names:
        from ray.tune.logger import TBXLoggerCallback

        callbacks.append(TBXLoggerCallback())
    if "mlflow" in names:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        uri, _ = _mlflow_experiment_id(out, space_name)
        _, experiment_name, _ = _mlflow_target(out, space_name)
        callbacks.append(
            MLflowLoggerCallback(
                tracking_uri=uri,
                experiment_name=experiment_name,
                tags={"study": space_name, "tune_experiment": experiment},
            )
        )
    if "wandb" in names:
        from ray.air.integrations.wandb import WandbLoggerCallback

        settings = _wandb_settings(out, space_name)
        callbacks.append(WandbLoggerCallback(group=experiment, **settings))
    return callbacks


def log_report(names: list[str], out: Path, space_name: str, summary: dict, tensorboard_dir: Path) -> None:
    """Add the study's report (report.md, tables/, claims and notes of ``summary``, what
    ``analysis.report.report_study`` returned) to each tracker of ``names`` as a run of its own."""
    report = Path(summary["report"])
    tables = report.parent / TABLES_DIR
    digest = {
        "claims": summary.get("claims", []),
        "notes": summary.get("notes", []),
        "problems": summary.get("problems"),
    }
    digest = json.loads(json.dumps(digest, default=str))  # numbers of numpy types, as plain JSON
    if "tensorboard" in names:
        from tensorboardX import SummaryWriter

        with SummaryWriter(str(tensorboard_dir)) as writer:
            writer.add_text("report", report.read_text())
            writer.add_text("claims", "\n".join(f"    {line}" for line in json.dumps(digest, indent=1).splitlines()))
    if "mlflow" in names:
        from mlflow.tracking import MlflowClient

        uri, experiment_id = _mlflow_experiment_id(out, space_name)
        client = MlflowClient(uri)
        run = client.create_run(experiment_id, run_name=REPORT_RUN, tags={"study": space_name, "kind": "report"})
        client.log_text(run.info.run_id, report.read_text(), REPORT_FILE)
        client.log_dict(run.info.run_id, digest, "summary.json")
        if tables.is_dir():
            client.log_artifacts(run.info.run_id, str(tables), TABLES_DIR)
        client.set_terminated(run.info.run_id)
    if "wandb" in names:
        import wandb

        run = wandb.init(name=f"{space_name} {REPORT_RUN}", job_type=REPORT_RUN, **_wandb_settings(out, space_name))
        run.summary.update({"report": report.read_text(), **digest})
        artifact = wandb.Artifact(f"{space_name}-{REPORT_RUN}", type=REPORT_RUN)
        artifact.add_file(str(report))
        if tables.is_dir():
            artifact.add_dir(str(tables), name=TABLES_DIR)
        run.log_artifact(artifact)
        run.finish()
