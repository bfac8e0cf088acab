"""One trial of a study, without Ray.

    python -m study.trial --space SPACE [--scale cpu|paper] [--index N] [--set key=value ...]
                          [--data-root DIR] [--out DIR] [--plugin MODULE ...]

Takes grid point N (default 0) of the search space, applies the overrides,
trains, evaluates, and writes to OUT (default results/trials/SPACE-N):
``metrics.json`` (per evaluation set), ``predictions.parquet`` (one row per
recording and evaluation set), ``checkpoint.pt`` (best weights and what is
needed to use them) and ``config.json``. With no --data-root it runs on the
built-in synthetic datasets.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import SpaceError, load_space, parse_settings
from .data import DataError
from .registry import load_plugins
from .results import write_trial
from .synthetic import default_data_root
from .train import train_and_evaluate
from .trial_data import prepare_data

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m study.trial", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--space", required=True, help="search space name (search_spaces/NAME.yaml) or path")
    parser.add_argument("--scale", default=None, help="scale of the space (cpu, paper)")
    parser.add_argument("--index", type=int, default=0, help="grid point to run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    parser.add_argument("--data-root", default=None, help="folder with physionet2016/, pascal/, icbhi2017/")
    parser.add_argument("--out", default=None)
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE (repeatable) to register its models, datasets and perturbations",
    )
    args = parser.parse_args(argv)
    try:
        load_plugins(args.plugin)
        space = load_space(args.space, args.scale)
        overrides = parse_settings(args.set)
        configs = space.trial_configs(overrides)
        if not 0 <= args.index < len(configs):
            raise SpaceError(f"--index {args.index} out of range: {space.name} has {len(configs)} grid points")
        trial = configs[args.index]
        data_root = Path(args.data_root) if args.data_root else default_data_root()
        out = Path(args.out or Path("results") / "trials" / f"{space.name}-{args.index}")
        data = prepare_data(trial, data_root, progress=not args.quiet)
    except (SpaceError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def report(row, _get_state):
        if not args.quiet:
            print(
                "  " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                flush=True,
            )

    trial_id = out.name
    result = train_and_evaluate(trial, data, trial_id=trial_id, report=report)
    write_trial(out, trial, result, data.info, trial_id)
    print(
        f"{trial_id}: {result.epochs} epochs (best {result.best_epoch}), {result.wall_time_s:.1f} s, "
        f"threshold {result.threshold:.3f} (chosen on validation)"
    )
    for name, metrics in result.metrics.items():
        keys = ("roc_auc", "mcc", "f1", "accuracy", "sensitivity", "specificity", "balanced_accuracy", "score")
        print(f"  {name:22s} " + "  ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics))
    print(f"wrote {out}/metrics.json, predictions.parquet, checkpoint.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
