"""Command-line tools for datasets.

    python -m study.data inspect DATASET ROOT [--json] [--skip-bad] [--mapping paper|clinical]
    python -m study.data synth OUT [--seed N] [--physionet N] [--physionet-test N] [--pascal N] [--icbhi N]
                               [--preset default|positive_control]
    python -m study.data features DATASET ROOT --profile P [--set key=value ...] [--jobs N] [--cache DIR]
    python -m study.data duplicates DATA_ROOT [--set data.KEY=VALUE ...]
    python -m study.data cache verify|clean [--profile NAME|KEY] [--cache DIR]
    python -m study.data layout physionet2016|pascal|icbhi2017 SOURCE DATA [--partial] [--force]

DATASET is physionet2016, pascal, icbhi2017 or manifest (ROOT = the CSV file).
`layout` writes a dataset's official download (SOURCE: the archive, or a folder holding the
downloads and/or their unpacked folders) to DATA/DATASET, where the loaders read it; docs/data.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import pandas as pd

from ..io import print_resource_error
from ..registry import PluginError, load_plugins
from . import LOADERS, DataError, load_dataset, summarize
from .layout import DATASETS as LAYOUTS
from .layout import layout_dataset
from .synth import PRESETS, write_synthetic

__all__ = [
    "main",
]


def _load(args):
    options = {"skip_bad": args.skip_bad}
    if args.dataset == "pascal":
        options["mapping"] = args.mapping
    return load_dataset(args.dataset, args.root, **options)


def _print_summary(summary: dict) -> None:
    print(f"{summary['dataset']} at {summary['root']}")
    print(f"  recordings: {summary['recordings']}  items: {summary['items']}")
    for key in ("labels", "binary_labels", "splits", "sources", "sample_rates"):
        print(f"  {key}: " + ", ".join(f"{k}={v}" for k, v in summary[key].items()))
    for split, labels in summary["labels_by_split"].items():
        print(f"  {split}: " + ", ".join(f"{k}={v}" for k, v in labels.items()))
    d = summary["duration_s"]
    print(f"  duration: min {d['min']:.2f} s, max {d['max']:.2f} s, total {d['total'] / 3600:.2f} h")
    print(f"  duplicate groups (identical audio): {len(summary['duplicates'])}")
    for group in summary["duplicates"][:20]:
        print("    " + " = ".join(group))
    skip = {
        "dataset",
        "root",
        "recordings",
        "items",
        "labels",
        "binary_labels",
        "splits",
        "sources",
        "sample_rates",
        "labels_by_split",
        "duration_s",
        "duplicates",
        "problems",
    }
    for key, value in summary.items():
        if key not in skip:
            print(f"  {key}: {value}")
    print(f"  problems: {len(summary['problems'])}")
    for problem in summary["problems"]:
        print(f"    {problem}")


def cmd_inspect(args) -> int:
    summary = summarize(_load(args))
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        _print_summary(summary)
    return 0


def cmd_synth(args) -> int:
    summary = write_synthetic(
        args.out,
        seed=args.seed,
        physionet=args.physionet,
        physionet_test=args.physionet_test,
        pascal=args.pascal,
        icbhi=args.icbhi,
        preset=args.preset,
    )
    print(json.dumps(summary, indent=1))
    return 0


def cmd_features(args) -> int:
    from ..cache import FeatureCache, extract_features
    from ..config import parse_settings
    from ..features import get_profile

    profile = get_profile(args.profile, **parse_settings(args.set))
    started = time.perf_counter()
    dataset = _load(args)
    loaded = time.perf_counter()
    features = extract_features(
        dataset.table,
        profile,
        cache=FeatureCache(args.cache) if args.cache else None,
        n_jobs=args.jobs,
        desc=args.dataset,
    )
    s = features.stats
    total = time.perf_counter() - started
    print(
        f"{args.dataset}: {s['items']} items, {s['windows']} windows, profile {profile.name} ({profile.key()}): "
        f"{s['cached']} cached, {s['computed']} computed, {s['repaired']} damaged cache entries repaired; "
        f"features {s['seconds']:.2f} s, "
        f"loading the table {loaded - started:.2f} s, total {total:.2f} s"
    )
    print(
        f"  images {features.images.shape} {features.images.dtype}, waves {features.waves.shape} "
        f"{features.waves.dtype}, {(features.images.nbytes + features.waves.nbytes) / 2**20:.0f} MiB in memory"
    )
    return 0


def _megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.1f} MB"


def cmd_cache(args) -> int:
    """Check every cached feature entry (``verify``, removing damaged ones) or delete the cache (``clean``)."""
    from ..cache import FeatureCache, clean_cache, verify_cache

    root = FeatureCache(args.cache).root
    key = args.profile
    which = f"profile {args.profile}" if key else "every profile"
    if args.action == "clean":
        removed = clean_cache(root, key)
        for row in removed:
            print(f"{row['profile']} ({row['name']}): {_megabytes(row['bytes'])} removed")
        print(f"feature cache {root}, {which}: {_megabytes(sum(r['bytes'] for r in removed))} freed")
        return 0
    rows = verify_cache(root, key)
    for row in rows:
        print(
            f"{row['profile']} ({row['name']}): {row['items']:,} items ({_megabytes(row['item_bytes'])}), "
            f"{row['packs']} packs ({_megabytes(row['pack_bytes'])}) intact; {len(row['damaged'])} damaged, removed"
            + (f"; {row['legacy_packs']} packs without a manifest removed (repacked)" if row["legacy_packs"] else "")
        )
        for path in row["damaged"]:
            print(f"  damaged: {path}")
    damaged = sum(len(r["damaged"]) for r in rows)
    total = sum(r["item_bytes"] + r["pack_bytes"] for r in rows)
    print(
        f"feature cache {root}, {which}: {len(rows)} profile folder(s), {_megabytes(total)} intact, "
        f"{damaged} damaged entr{'y' if damaged == 1 else 'ies'} removed (recomputed when next needed)"
    )
    return 0


def cmd_duplicates(args) -> int:
    """Identical audio within and across the datasets a trial config uses (loaded as a trial loads
    them), and what its ``data.duplicates`` setting does about it (study.trial_data.handle_duplicates)."""
    from ..config import DEFAULTS, DataConfig, parse_settings
    from ..trial_data import describe_duplicates, load_tables
    from .table import duplicate_groups

    data = DataConfig.from_config({**DEFAULTS, **parse_settings(args.set)})
    selected, datasets = load_tables(data, args.root)
    loaded = datasets.loaded
    for name, ds in loaded.items():
        print(f"{name}: {len(ds.duplicates)} duplicate group(s) within it")
        for group in ds.duplicates[:20]:
            print("    " + " = ".join(group))
    names = list(loaded)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            both = [loaded[n].table.assign(id=n + ":" + loaded[n].table["id"]) for n in (first, second)]
            groups = [g for g in duplicate_groups(pd.concat(both)) if {x.split(":")[0] for x in g} == {first, second}]
            print(f"{first} and {second}: {len(groups)} duplicate group(s) across them")
            for group in groups[:20]:
                print("    " + " = ".join(group))
    info = selected.duplicates
    print(
        f"data.duplicates={data.duplicates}, training {data.train_set}, evaluation {', '.join(data.eval_sets)}: "
        f"{info['duplicates_removed_from_training']} training and {info['duplicates_removed_from_validation']} "
        f"validation recording(s) removed, {info['duplicates_dropped_from_eval']} copy(ies) dropped inside "
        f"evaluation sets, {info['duplicates_train_val']} train/validation pair(s) left"
    )
    for line in describe_duplicates(info):
        print("  " + line)
    return 0


def cmd_layout(args) -> int:
    """Lay out a dataset from its official download under DATA (study.data.layout.layout_dataset)."""
    layout_dataset(args.dataset, args.source, args.data, partial=args.partial, force=args.force, echo=print)
    return 0


def _plugin_option(parser: argparse.ArgumentParser, help: str | None = None) -> argparse.ArgumentParser:
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE", help=help)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m study.data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    plugin_help = "import MODULE (repeatable) first, for the dataset loaders it registers"
    # the plugins first: the dataset names they register are choices of the parser below
    try:
        load_plugins(_plugin_option(argparse.ArgumentParser(add_help=False)).parse_known_args(argv)[0].plugin)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def dataset_args(p):
        _plugin_option(p, plugin_help)
        p.add_argument("dataset", choices=sorted(LOADERS))
        p.add_argument("root", help="dataset folder (for manifest: the CSV file)")
        p.add_argument("--skip-bad", action="store_true", help="skip bad files and report them instead of stopping")
        p.add_argument("--mapping", default="paper", choices=["paper", "clinical"], help="PASCAL label mapping")

    p = sub.add_parser("inspect", help="recordings, labels, splits, rates, durations, duplicates, problems")
    dataset_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("synth", help="write synthetic PhysioNet, PASCAL and ICBHI datasets")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--physionet", type=int, default=300, help="PhysioNet recordings (training-a ... f)")
    p.add_argument(
        "--physionet-test", type=int, default=None, help="of them, copied to validation/ (default: about 10 %%)"
    )
    p.add_argument("--pascal", type=int, default=40, help="PASCAL files")
    p.add_argument("--icbhi", type=int, default=12, help="ICBHI recordings")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="generator parameters: default, or positive_control (one cue per abnormal recording, "
        "seen well by only one branch)",
    )
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("features", help="fill the feature cache for a dataset")
    dataset_args(p)
    p.add_argument("--profile", default="paper", help="feature profile: paper or native")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a profile setting")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--cache", default=None, help="cache folder (default: $AUDIOFUSE_CACHE or ~/.cache/audiofuse)")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("duplicates", help="identical audio within and across a trial's datasets, and what is removed")
    p.add_argument("root", help="folder with physionet2016/, pascal/, icbhi2017/")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a data.* setting of the trial")
    p.set_defaults(func=cmd_duplicates)

    p = sub.add_parser("cache", help="check the feature cache and remove damaged entries, or delete it, with sizes")
    p.add_argument("action", choices=["verify", "clean"])
    p.add_argument(
        "--profile",
        default=None,
        help="only this profile's folders, by name (native, paper, ast) or key (default: all)",
    )
    p.add_argument("--cache", default=None, help="feature cache folder (as for `features`)")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser(
        "layout", help="lay out a dataset's official download (archives or unpacked folders) under DATA, and load it"
    )
    p.add_argument("dataset", choices=sorted(LAYOUTS), metavar="DATASET", help=", ".join(sorted(LAYOUTS)))
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="the downloaded archive (.zip, .tar, .tar.gz, .tgz), or a folder holding the downloads "
        "(archives and/or their unpacked folders)",
    )
    p.add_argument("data", metavar="DATA", help="data root: the dataset is written to DATA/DATASET")
    p.add_argument(
        "--partial", action="store_true", help="lay out an incomplete download and print what is missing, not stop"
    )
    p.add_argument("--force", action="store_true", help="replace DATA/DATASET when it already holds files")
    p.set_defaults(func=cmd_layout)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        return print_resource_error(exc)


if __name__ == "__main__":
    sys.exit(main())
