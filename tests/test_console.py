"""What a study prints: a line per trial start and end, a status line, Tune's log kept, repeats shown once."""

from __future__ import annotations

import io
import logging
from types import SimpleNamespace

from study.console import StudyConsole, format_seconds, tune_output


def _trial(trial_id: str, label: str, status: str = "RUNNING", result: dict | None = None):
    return SimpleNamespace(trial_id=trial_id, label=label, status=status, last_result=result or {})


def _describe(trial) -> str:
    return f"{trial.label} ({trial.trial_id})"


def test_a_line_per_trial_and_a_status_line_with_the_time_left():
    stream, now = io.StringIO(), [0.0]
    console = StudyConsole(
        3, "physionet2016:test/roc_auc", "roc_auc", _describe, every=0, stream=stream, clock=lambda: now[0]
    )
    first = _trial("aa11", "architecture=waveform seed=0")
    console.on_trial_start(0, [first], first)
    result = {"epoch": 12, "best_epoch": 9, "val/roc_auc": 0.8123, "physionet2016:test/roc_auc": 0.7711}
    now[0] = 65.0
    done = _trial("aa11", "architecture=waveform seed=0", "TERMINATED", {**result, "wall_time_s": 65.0})
    console.on_trial_complete(1, [done], done)
    running = _trial("bb22", "architecture=fusion seed=0")
    console.on_trial_start(2, [done, running], running)
    now[0] = 105.0  # the running trial has 25 s of the 65 s mean left; the pending one takes 65 s
    console.on_step_end(3, [done, running])
    now[0] = 205.0  # past the mean: the running trial counts as about to finish
    console.on_step_end(4, [done, running])
    lines = [line.split("] ", 1)[1] for line in stream.getvalue().splitlines()]
    assert lines == [
        "start architecture=waveform seed=0 (aa11)",
        "done  architecture=waveform seed=0 (aa11): 12 epochs (best 9), validation roc_auc 0.812, "
        "physionet2016:test roc_auc 0.771, 1 min 05 s [1/3]",
        "start architecture=fusion seed=0 (bb22)",
        "status: 1 done, 1 running, 1 pending, 0 failed of 3; about 1 min 30 s left",
        "status: 1 done, 1 running, 1 pending, 0 failed of 3; about 1 min 05 s left",
    ]
    assert format_seconds(3725) == "1 h 02 min" and format_seconds(42) == "42 s"


def test_tunes_log_is_kept_in_the_study_folder(tmp_path):
    with tune_output(tmp_path / "tune.log"):
        logging.getLogger("ray.tune.tune").info("Wrote the latest version of all result files")
    logging.getLogger("ray.tune.tune").info("after the study: not kept")
    log = (tmp_path / "tune.log").read_text()
    assert "Wrote the latest version" in log and "not kept" not in log


def test_the_status_line_comes_only_after_a_quiet_minute():
    stream, now = io.StringIO(), [0.0]
    console = StudyConsole(2, "physionet2016:test/roc_auc", "roc_auc", _describe, stream=stream, clock=lambda: now[0])
    running = _trial("aa11", "seed=0")
    console.on_trial_start(0, [running], running)
    for second in (30.0, 59.0):
        now[0] = second
        console.on_step_end(1, [running])
    assert stream.getvalue().count("status:") == 0  # a line 59 s ago: nothing to add
    now[0] = 61.0
    console.on_step_end(2, [running])
    assert stream.getvalue().count("status:") == 1


def test_rays_console_shows_warnings_not_its_info_nor_the_opt_out_notice(tmp_path):
    seen = io.StringIO()
    console = logging.StreamHandler(seen)
    ray_logger = logging.getLogger("ray")
    ray_logger.addHandler(console)
    try:
        with tune_output(tmp_path / "tune.log"):
            logging.getLogger("ray.tune.tune").info("Wrote the latest version of all result files")
            logging.getLogger("ray._private.auth").warning("Token authentication is enabled for this Ray cluster. Set")
            logging.getLogger("ray.tune").warning("a trial failed")
        logging.getLogger("ray").warning("after the study")
    finally:
        ray_logger.removeHandler(console)
    assert seen.getvalue().splitlines() == ["a trial failed", "after the study"]
    assert "Wrote the latest version" in (tmp_path / "tune.log").read_text()
