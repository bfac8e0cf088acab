"""Command line of the analysis package.

    python -m analysis report results/NAME [options]   # tables, plots and report.md of a finished study
    python -m analysis robustness results/NAME [options]  # metric vs severity, fusion vs branches, ablation
    python -m analysis calibrate [--json] [options]    # Monte-Carlo check of the tests and intervals
    python -m analysis bench [--json] [--no-report]    # timings, incl. the 150-trial report

``python -m analysis COMMAND --help`` lists a command's options.
"""

from __future__ import annotations

import sys

from study.io import print_resource_error
from study.lock import StudyLocked

COMMANDS = ("report", "robustness", "calibrate", "bench")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "report":
        from analysis.report import main as run
    elif command == "robustness":
        from analysis.robustness import main as run
    elif command == "calibrate":
        from analysis.calibrate import main as run
    elif command == "bench":
        from analysis.bench import main as run
    else:
        print(f"error: unknown command {command!r}; expected one of {COMMANDS}", file=sys.stderr)
        return 2
    try:
        return run(rest)
    except StudyLocked as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        return print_resource_error(error)


if __name__ == "__main__":
    raise SystemExit(main())
