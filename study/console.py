"""What a study prints while it runs: a line per trial start and end, and a periodic status line.

Tune's own output (a configuration box per started trial, a trial table every
few seconds) drowns what a person wants to know: which trial ran, its headline
metric, and how far along the study is. :class:`StudyConsole` is a Tune
callback printing exactly that; ``study.run --verbose 2`` brings Tune's tables
back. :func:`tune_output` writes Tune's log records to the study folder
whatever is shown.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ray import tune

__all__ = ["StudyConsole", "ConsoleFilter", "tune_output", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """1 h 02 min, 3 min 05 s, 42 s."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


class StudyConsole(tune.Callback):
    """Prints "start LABEL", "done LABEL: … [k/N]" per trial, and a status line when ``every`` seconds
    passed without a line (a log stays short; a quiet study still shows it is alive).

    ``total`` is the number of trials this run trains, ``headline`` the evaluation-set metric
    shown on each finished trial (e.g. "physionet2016:test/roc_auc"), ``monitor`` the validation one,
    ``describe(trial)`` a trial's LABEL (its grid values and study id).
    """

    def __init__(self, total: int, headline: str, monitor: str, describe, every: float = 60.0, stream=None, clock=None):
        self.total, self.headline, self.monitor, self.every = total, headline, monitor, every
        self._label = describe
        self.stream = stream or sys.stdout
        self.clock = clock or time.monotonic
        self.started = self.clock()
        self.last_status = self.started
        self.walls: list[float] = []
        self.trial_started: dict[str, float] = {}

    def _print(self, text: str) -> None:
        self.last_status = self.clock()
        print(f"[{format_seconds(self.clock() - self.started):>10}] {text}", file=self.stream, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.trial_started[trial.trial_id] = self.clock()
        self._print(f"start {self._label(trial)}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        wall = float(result.get("wall_time_s") or 0.0)
        self.walls.append(wall)
        parts = [f"{result.get('epoch', '?')} epochs (best {result.get('best_epoch', '?')})"]
        for name, key in (("validation", f"val/{self.monitor}"), (self.headline.split("/")[0], self.headline)):
            if isinstance(result.get(key), (int, float)):
                parts.append(f"{name} {self.monitor if name == 'validation' else key.split('/')[-1]} {result[key]:.3f}")
        parts.append(format_seconds(wall))
        self._print(f"done  {self._label(trial)}: " + ", ".join(parts) + f" [{len(self.walls)}/{self.total}]")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(f"error {self._label(trial)} (retried from its last checkpoint while retries remain)")

    def on_step_end(self, iteration, trials, **info):
        if self.clock() - self.last_status >= self.every:
            self._print(self.status(trials))

    def status(self, trials) -> str:
        counts = {state: sum(t.status == state for t in trials) for state in ("TERMINATED", "RUNNING", "ERROR")}
        done, running, failed = counts["TERMINATED"], counts["RUNNING"], counts["ERROR"]
        pending = max(self.total - done - running - failed, 0)
        text = f"status: {done} done, {running} running, {pending} pending, {failed} failed of {self.total}"
        if self.walls and (pending or running):
            # a pending trial takes the mean finished wall time; a running one what is left of it
            mean, now = sum(self.walls) / len(self.walls), self.clock()
            running_left = sum(
                max(mean - (now - self.trial_started.get(t.trial_id, now)), 0.0)
                for t in trials
                if t.status == "RUNNING"
            )
            left = (pending * mean + running_left) / max(running, 1)
            text += f"; about {format_seconds(left)} left"
        return text


@contextmanager
def tune_output(log_path: Path):
    """While a study runs: every Ray Tune log record (INFO and up) also goes to ``log_path``, and Ray's
    console shows warnings and errors only (:class:`ConsoleFilter`)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, encoding="utf-8", delay=True)  # no file until Tune logs something
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    tune_logger = logging.getLogger("ray.tune")
    tune_logger.addHandler(handler)
    quiet = ConsoleFilter()
    ray_logger = logging.getLogger("ray")
    for console in ray_logger.handlers:
        console.addFilter(quiet)
    try:
        yield
    finally:
        tune_logger.removeHandler(handler)
        handler.close()
        for console in ray_logger.handlers:
            console.removeFilter(quiet)


class ConsoleFilter(logging.Filter):
    """Ray's console lines a study does not need: its INFO records (Tune's are in tune.log), and the
    warnings of :data:`_NOT_SHOWN`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        return not record.getMessage().startswith(_NOT_SHOWN)


# Ray's notice that token authentication is on (its advice: switch it off), and Tune's lines when a study is
# interrupted (study.run says in one line what was kept and how to resume; tune.log keeps them).
_NOT_SHOWN = (
    "Token authentication is enabled for this Ray cluster",
    "Stop signal received",
    "Trials did not complete",
    "Experiment has been interrupted",
    "Failed to fetch metrics for",  # the trials an interrupted experiment never started
)
