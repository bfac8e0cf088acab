"""Run a whole study with Ray Tune.

    python -m study.run --space NAME [--scale cpu|paper] [--data-root DIR] [--address auto|HOST:PORT]
                        [--out DIR] [--resume | --extend] [--max-concurrent N] [--set key=value ...]
                        [--init-checkpoint AST_STATE_DICT.pth] [--plugin MODULE ...]
                        [--track tensorboard|mlflow|wandb ...]

One trial = one grid point of the space (or one sample of its ``search``, :mod:`study.search`),
trained by :func:`study.train.train_and_evaluate`; Tune holds its settings flat, by name
(``model.fusion``), as its trackers (:mod:`study.tracking`) show them. Features are computed once
here, before any trial starts, and reach every trial on every node through
Ray's object store, so worker nodes need no dataset. Each trial reports its
metrics and a checkpoint every epoch; a failed trial is retried from its last
checkpoint (``FailureConfig``); its final files come back through its last
checkpoint and are kept under ``OUT/trials/TRIAL_ID/``.

Resume and extend (Ray's own restore keeps errored trials errored and ignores
changes to the spec; here both are explicit):

* ``--resume``: keeps finished trials, continues interrupted ones from their
  last checkpoint and retries errored ones from theirs. A space that changed
  since the study started is refused, with the differences listed.
* ``--extend``: runs only the grid points the existing study lacks (more seeds,
  a new fusion type) and merges them into the same results.

Results (OUT defaults to results/NAME): trials.parquet, predictions.parquet,
study.json; the analysis report's tables/ and plots/ when it exists.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from .cluster import check_storage, check_trials_fit
from .config import Space, SpaceError, check_resources, load_space, parse_settings
from .connection import ray_session
from .console import tune_output
from .data import DataError
from .io import print_resource_error
from .lock import StudyLocked, study_lock
from .provenance import code_version, package_versions
from .registry import load_plugins
from .results import TRIALS_DIR, TUNE_DIR, TUNE_LOG, collect_trials, write_state
from .search import check_search
from .state import check_added_settings, load_study_state, nothing_left, now
from .synthetic import default_data_root
from .tracking import TRACKERS, check_trackers, log_report
from .tuners import StudyRun, replicate_configs, run_grid, run_search, share_data

__all__ = ["RunOptions", "run_study", "trial_resources", "main"]


@dataclass(frozen=True)
class RunOptions:
    """How to run a study, besides its space and folder: see :func:`run_study`."""

    data_root: Path | None = None
    address: str | None = None
    storage: str | None = None
    resume: bool = False
    extend: bool = False
    max_concurrent: int | None = None
    overrides: dict = field(default_factory=dict)
    resources: dict | None = None
    report: bool = True
    verbose: int = 1
    plugins: list = field(default_factory=list)
    track: list = field(default_factory=list)


def run_study(space: Space, *, out: Path, **options) -> dict:
    """Run (or resume, or extend) a study; returns its summary. See the module docstring.

    ``options`` are :class:`RunOptions`' fields. ``resources`` overrides the space's per-trial
    ``{"cpu": n, "gpu": g}`` (either key alone). A space with a ``search`` first runs the search
    (:mod:`study.search`) into ``OUT/search/``, then trains its best configuration and the default one
    over the scale's seeds into ``OUT/trials``. ``plugins`` are modules (:func:`study.registry.load_plugins`)
    loaded here and on every Ray worker; ``track`` names trackers (:mod:`study.tracking`) every trial
    and the report are logged to. The study folder is locked meanwhile (:mod:`study.lock`): a second
    driver is refused.
    """
    given = RunOptions(**{k: v for k, v in options.items() if v is not None})
    options = replace(
        given,
        plugins=load_plugins(list(given.plugins)),
        track=check_trackers(list(given.track)),
        overrides=dict(given.overrides),
    )
    mode = " --resume" if options.resume else " --extend" if options.extend else ""
    out = Path(out).expanduser()  # "~/results/x" arrives unexpanded from a Ray Job's entrypoint, quoted
    with study_lock(out, f"python -m study.run --space {space.name}{mode}"):
        return _run_locked(space, out, options)


def _run_locked(space: Space, out: Path, options: RunOptions) -> dict:
    resources = trial_resources(space, options.resources)
    state = load_study_state(space, out, options.overrides, options.resume, options.extend)
    configs = space.trial_configs(options.overrides)  # typed; the tuners hand Tune their flat view
    check_added_settings(out, state, configs)
    if space.search is not None:  # again with the overrides: they may change what the trials report
        check_search(space.search, f"{space.path} (search, with --set)", configs[0])
    data_root = Path(options.data_root).expanduser() if options.data_root else default_data_root()
    state.update(
        data_root=str(data_root),
        code=code_version(),
        packages=package_versions(),
        resources=resources,
        plugins=options.plugins,
    )
    # Tune's checkpoints: OUT/tune on one machine; on a multi-node cluster a storage every node
    # reaches (s3://bucket/prefix, or a shared file system), as Ray requires.
    storage = options.storage
    if storage and "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())  # Tune needs an absolute path
    state["storage"] = storage or state.get("storage") or str(out.resolve() / TUNE_DIR)
    searched = space.search is None or state.get("search", {}).get("complete")
    if space.search is not None and searched:
        configs = replicate_configs(space, configs, state["search"]["best"]["params"])
    if searched and nothing_left(out, state, configs, options.resume):
        trials, _ = collect_trials(out / TRIALS_DIR)
        write_state(out, state)
        print(f"{space.name}: all {len(trials)} trials already finished in {out}; nothing to train")
        return {"trials": len(trials), "trained": 0, "out": str(out)}

    started = time.perf_counter()
    _quiet_tune(options.verbose)
    with tune_output(out / TUNE_LOG), ray_session(options.address, log_to_driver=options.verbose > 2):
        check_trials_fit(resources)  # before the features: both fail in a minute at most, the features may take longer
        check_storage(state["storage"])
        data_refs = share_data(configs, data_root, state, options.verbose)
        write_state(out, state)
        run = StudyRun(
            space,
            out,
            state["storage"],
            data_refs,
            resources,
            options.plugins,
            options.track,
            options.resume,
            options.max_concurrent,
            options.verbose,
        )
        if space.search is not None and not state.get("search", {}).get("complete"):
            run_search(run, state, configs[0])
            configs = replicate_configs(space, configs, state["search"]["best"]["params"])
        collected, errors = run_grid(run, state, configs)
    trials, _ = collect_trials(out / TRIALS_DIR)
    state["finished"] = now()
    write_state(out, state)
    summary = {
        "trials": len(trials),
        "trained": len(collected),
        "failed": len(errors),
        "retried": int(trials["retries"].gt(0).sum()) if len(trials) else 0,
        "seconds": round(time.perf_counter() - started, 1),
        "out": str(out),
    }
    if "search" in state:
        summary["search"] = {k: state["search"][k] for k in ("trials", "stopped_early", "best", "optuna")}
    _print_summary(space, trials, summary, errors)
    if options.report and len(trials) and not errors:
        report_summary = _report(out)
        if report_summary is not None and options.track:
            tensorboard_dir = Path(state["storage"]) / "report" if "://" not in state["storage"] else out / "report"
            log_report(options.track, out, space.name, report_summary, tensorboard_dir)
    return summary


def _quiet_tune(verbose: int) -> None:
    """Tune's environment switches for a study's console (set before Ray starts, unless the user set them)."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Tune forces an experiment snapshot whenever a trial has checkpointed num_to_keep times since the
    # last one, and warns when that happens within 5 s. Every epoch checkpoints (a killed worker resumes
    # from its last epoch), so with short CPU epochs it always happens; the snapshot is what a resumed
    # study restores from, and on local or S3 storage it costs milliseconds. Threshold 0: no warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ctrl-C reaches Tune's graceful stop through study.connection's handler, which also knows it happened.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    if verbose < 2:  # Tune's newer console prints an experiment box and result paths even at verbose 0
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def trial_resources(space: Space, override: dict | None = None) -> dict:
    """Per-trial Ray resources: the space's at its scale, with the command line's override."""
    override = {k: v for k, v in (override or {}).items() if v is not None}
    return check_resources({**space.resources, **override}, "--cpus-per-trial/--gpus-per-trial")


def _print_summary(space, trials: pd.DataFrame, summary: dict, errors) -> None:
    print(
        f"{space.name}: {summary['trials']} trials in the study, {summary['trained']} trained now, "
        f"{summary['failed']} failed, {summary['retried']} retried after a failure "
        f"({summary['seconds']:.0f} s)"
    )
    for error in errors:
        print(f"  failed: {_last_line(error.error)}")
    if "search" in summary:
        search = summary["search"]
        print(
            f"  search: {search['trials']} trials ({search['stopped_early']} stopped early by the scheduler); best by "
            f"validation: {search['best']['params']} ({search['best']['value']:.4f}, trial {search['best']['trial_id']})"
        )
    # the best trial by validation only: picking it on a test set would make that test set a validation set
    monitor = trials.get("config/train.monitor", pd.Series(["roc_auc"])).iloc[0] if len(trials) else "roc_auc"
    if len(trials) and f"val/{monitor}" in trials and trials[f"val/{monitor}"].notna().any():
        best = trials.loc[trials[f"val/{monitor}"].idxmax()]
        axis = space.compare.get("axis")
        print(
            f"  best trial by validation {monitor}: {best['trial_id']}"
            + (f" ({axis}={best.get('config/' + axis)})" if axis else "")
            + f", {best[f'val/{monitor}']:.4f}; the configurations' test results are in the report"
        )


def _last_line(error: BaseException) -> str:
    """A trial's error as its last line (the exception and its message): Ray's carries the worker's traceback."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _report(out: Path) -> dict | None:
    """The analysis report of the study in ``out``; its summary (report_study's), None without the analysis package."""
    try:
        from analysis.report import report_study
    except ImportError:
        return None  # the analysis package is optional for running a study
    summary = report_study(out)
    # the report's lead as it opens report.md, less its heading, links and table rules: a log stays short
    print(
        "\n".join(
            line
            for line in "\n".join(summary["lead"]).splitlines()
            if line and not line.startswith(("## ", "- ", "| --- "))
        )
    )
    notes = f", {len(summary['notes'])} note(s) in it" if summary["notes"] else ""
    print(f"report: {summary['report']} and report.html{notes}; trials.parquet, predictions.parquet beside it")
    return summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m study.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--space", required=True, help="search space name (search_spaces/NAME.yaml) or path")
    parser.add_argument("--scale", default=None, help="cpu (tiny models, default) or paper")
    parser.add_argument(
        "--data-root",
        default=None,
        help="folder with physionet2016/, pascal/, icbhi2017/ (default: built-in synthetic data)",
    )
    parser.add_argument("--address", default=None, help="Ray cluster: auto or HOST:PORT (default: a local Ray)")
    parser.add_argument("--out", default=None, help="results folder (default: results/SPACE)")
    parser.add_argument(
        "--storage",
        default=None,
        help="Tune checkpoint storage, e.g. s3://bucket/studies (default: OUT/tune; "
        "a multi-node cluster needs storage every node reaches)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue an interrupted study in OUT")
    group.add_argument("--extend", action="store_true", help="run only the grid points the study in OUT lacks")
    parser.add_argument("--max-concurrent", type=int, default=None, help="trials running at once")
    parser.add_argument(
        "--cpus-per-trial",
        type=float,
        default=None,
        help="CPUs Ray reserves per trial (default: the space's resources at the scale)",
    )
    parser.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
        help="GPUs per trial, a fraction to share one GPU (default: the space's; paper scale 0.5, cpu scale 0)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    parser.add_argument(
        "--init-checkpoint",
        default=None,
        metavar="PATH",
        help="AudioSet-pretrained AST state dict on local disk (YuanGongND/ast "
        "audioset_10_10_0.4593.pth) to start every AST trial from; sets model.init_checkpoint",
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE (repeatable), here and on every Ray worker, to register its models, datasets and "
        "perturbations (study.registry); installed packages' audiofuse.plugins entry points load by themselves",
    )
    parser.add_argument(
        "--track",
        action="append",
        default=[],
        choices=TRACKERS,
        help="log every trial and the report to this tracker too (repeatable), through Ray Tune's logger callbacks",
    )
    parser.add_argument("--no-report", action="store_true", help="skip the analysis report at the end")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved plan (trials, resources, concurrency, feature sizes against the "
        "object store, grid axes that change no training input) and train nothing",
    )
    parser.add_argument(
        "--verbose",
        type=int,
        default=1,
        help="0 quiet; 1 a line per trial start and end and a status line (default); 2 Tune's tables instead; "
        "3 trial logs too",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        load_plugins(args.plugin)  # before the space: its settings may name what the plugins register
        space = load_space(args.space, args.scale)
        out = Path(args.out or Path("results") / space.name)
        overrides = parse_settings(args.set)
        if args.init_checkpoint is not None:
            checkpoint = Path(args.init_checkpoint).expanduser().resolve()
            if not checkpoint.is_file():
                raise ValueError(f"--init-checkpoint {args.init_checkpoint!r}: no such file")
            overrides["model.init_checkpoint"] = str(checkpoint)
        resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
        if args.dry_run:
            from .plan import build_plan, format_plan

            plan = build_plan(
                space,
                overrides=overrides,
                data_root=Path(args.data_root or default_data_root()),
                resources=trial_resources(space, resources),
                address=args.address,
                max_concurrent=args.max_concurrent,
            )
            print(format_plan(plan))
            return 0
        run_study(
            space,
            out=out,
            data_root=args.data_root,
            address=args.address,
            storage=args.storage,
            resume=args.resume,
            extend=args.extend,
            max_concurrent=args.max_concurrent,
            overrides=overrides,
            resources=resources,
            report=not args.no_report,
            verbose=args.verbose,
            plugins=args.plugin,
            track=args.track,
        )
    except KeyboardInterrupt:
        given = list(sys.argv[1:] if argv is None else argv)
        again = given + [] if "--resume" in given else given + ["--resume"]
        print(
            f"\ninterrupted: the trials that finished are kept in {out if 'out' in locals() else 'the study folder'} "
            f"(trials/, and Tune's state in tune/); continue with: python -m study.run {shlex.join(again)}",
            file=sys.stderr,
        )
        return 130
    except (SpaceError, DataError, ValueError, StudyLocked) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        return print_resource_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
