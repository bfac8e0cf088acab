"""A study's state across runs of ``study.run``: what resuming and extending a study may do.

* a new study starts a new state (study.json);
* ``--resume`` continues the state in OUT, refusing a space that changed since, with the differences;
* ``--extend`` takes the new space and runs only the grid points the study lacks;
* a setting added to the code after a study started (config.ADDED_SETTINGS) keeps its old value
  in that study, so its trials keep their ids;
* trials that finished in Tune's storage but were never collected (the driver was killed) are harvested.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from .config import ADDED_SETTINGS, Space, SpaceError, TrialConfig, added_settings_changed, grid_with_overrides
from .results import (
    FINAL_DIR,
    RUN_FILE,
    STUDY_FILE,
    TRIALS_DIR,
    TUNE_DIR,
    collect_trials,
    finished_trial_ids,
    install_trial,
    read_state,
    record_experiment,
)

__all__ = [
    "now",
    "load_study_state",
    "space_differences",
    "settings_predated",
    "check_added_settings",
    "nothing_left",
    "harvest_finished",
]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_study_state(space: Space, out: Path, overrides: dict, resume: bool, extend: bool) -> dict:
    """The study's state to run with: new, or the one in OUT when resuming or extending it.

    Raises SpaceError when OUT holds a study and neither --resume nor --extend was given, when the
    space changed since and --extend was not given, and when --extend is asked of a search."""
    try:
        previous = read_state(out)
    except ValueError as error:
        raise SpaceError(str(error)) from None
    resolved = {**space.resolved(), "overrides": overrides}
    # an override of a grid axis (e.g. --set seed=0) replaces that axis for the whole study
    resolved["grid"], _ = grid_with_overrides(resolved["grid"], overrides)
    if previous is None:
        return {"space": resolved, "experiments": [], "started": now(), "added_settings": sorted(ADDED_SETTINGS)}
    if not (resume or extend):
        raise SpaceError(
            f"{out} already holds study '{previous['space']['name']}': pass --resume to continue "
            f"it, --extend to add the grid points it lacks, or another --out"
        )
    # a setting the study predates, set to the value its trials ran with, changes nothing
    older = settings_predated(previous)
    kept = {k: v for k, v in overrides.items() if not (k in older and v == ADDED_SETTINGS[k])}
    differences = space_differences(previous["space"], {**resolved, "overrides": kept})
    if differences and not extend:
        raise SpaceError(
            f"the space changed since {Path(out) / STUDY_FILE} was written; refusing to resume:\n  "
            + "\n  ".join(differences)
            + "\npass --extend to run only the trials the study lacks"
        )
    if extend and previous["space"].get("search") is not None:
        raise SpaceError("--extend applies to grid spaces; an hpo search is resumed with --resume")
    if extend:
        previous["space"] = resolved
    return previous


def space_differences(old: dict, new: dict) -> list[str]:
    """Readable list of what changed between two resolved spaces."""
    lines = []
    for key in sorted(set(old) | set(new)):
        if key in ("scale",) or old.get(key) == new.get(key):
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    lines.append(f"{key}.{sub}: {a.get(sub)!r} -> {b.get(sub)!r}")
        else:
            lines.append(f"{key}: {a!r} -> {b!r}")
    if old.get("scale") != new.get("scale"):
        lines.append(f"scale: {old.get('scale')!r} -> {new.get('scale')!r}")
    return lines


def settings_predated(state: dict) -> list[str]:
    """The ADDED_SETTINGS a study's state predates (all of them for a study.json written before any)."""
    return [k for k in ADDED_SETTINGS if k not in state.get("added_settings", [])]


def check_added_settings(out: Path, state: dict, configs: list[TrialConfig]) -> None:
    """Refuse to resume or extend a study with another value of a setting it predates: its trials ran
    with the old value, and new ones would train on other data under other ids in the same study."""
    older = settings_predated(state)
    flats = [c.flat for c in configs]
    changed = sorted({k for c in flats for k in added_settings_changed({k: c[k] for k in older if k in c})})
    if changed:
        keep = " ".join(f"--set {k}={ADDED_SETTINGS[k]}" for k in changed)
        raise SpaceError(
            f"{Path(out) / STUDY_FILE} was started before {', '.join(changed)} existed and its trials ran as if they "
            f"were set to their old values; continue it with {keep}, or start a new study in another --out"
        )


def nothing_left(out: Path, state: dict, configs: list[TrialConfig], resume: bool) -> bool:
    """Whether every config finished and no interrupted experiment waits to be resumed."""
    latest = state["experiments"][-1] if state["experiments"] else None
    finished = finished_trial_ids(Path(out) / TRIALS_DIR)
    interrupted = resume and latest is not None and not latest.get("complete")
    return not interrupted and all(c.trial_id in finished for c in configs)


def harvest_finished(out: Path) -> list[str]:
    """Install the trials that finished in Tune's storage but were never collected, because the
    driver was killed first (a deadline, a closed SSH session), then rewrite the result tables.

    A finished trial's last checkpoint holds its final files (``FINAL_DIR``); each is installed
    into ``OUT/trials/ID`` as the driver would. Unfinished trials stay in the Tune experiment,
    and ``--resume`` continues them. Local storage only. Returns the ids installed now.
    """
    out = Path(out)
    state = read_state(out)
    if state is None:
        raise SpaceError(f"{out}: no {STUDY_FILE}; nothing to harvest")
    storage = state.get("storage") or str(out.resolve() / TUNE_DIR)
    if "://" in storage:
        raise SpaceError(f"{out}: the trials' storage {storage} is not a local folder; resume the study instead")
    finished = finished_trial_ids(out / TRIALS_DIR)
    installed = []
    for experiment in state["experiments"]:
        for final in sorted(Path(storage, experiment["name"]).glob(f"trial_*/checkpoint_*/{FINAL_DIR}/{RUN_FILE}")):
            record = json.loads(final.read_text())
            if record["trial_id"] in finished or record["trial_id"] in installed:
                continue
            folder = install_trial(out / TRIALS_DIR, record["trial_id"], final.parent)
            record_experiment(folder, experiment["name"])
            installed.append(record["trial_id"])
    collect_trials(out / TRIALS_DIR)
    return installed
