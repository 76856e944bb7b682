"""`python -m bench [CASE ...] [--quick]`: run benchmark cases, print a table, write JSON."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import pkgutil
import sys
from pathlib import Path

from bench import cases
from bench.harness import CASES, Result, print_table, write_json

RESULTS = Path(__file__).parent / "results" / "latest.json"


def main() -> int:
    """Run the chosen (default: all) cases."""
    for info in pkgutil.iter_modules(cases.__path__):
        importlib.import_module(f"bench.cases.{info.name}")
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "cases",
        nargs="*",
        metavar="CASE",
        help=f"cases to run (default all): {', '.join(sorted(CASES))}",
    )
    parser.add_argument("--quick", action="store_true", help="short runs, for smoke tests")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write results")
    args = parser.parse_args()
    unknown = [name for name in args.cases if name not in CASES]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}; choose from {', '.join(sorted(CASES))}")
    results: list[Result] = []
    for name in args.cases or sorted(CASES):
        description, func = CASES[name]
        print(f"- {name}: {description}", file=sys.stderr, flush=True)
        results.extend(asyncio.run(func(args.quick)))
    print(print_table(results))
    write_json(results, args.json)
    print(f"\nresults written to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
