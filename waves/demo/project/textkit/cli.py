"""The command line: ``python -m textkit slug|stats|roman ...``."""

import argparse
import json
import sys

from . import __version__
from .roman import from_roman, to_roman
from .slug import slugify
from .stats import summarize, top_words


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one sub-command per module."""
    parser = argparse.ArgumentParser(prog="textkit", description="Small text utilities.")
    parser.add_argument("--version", action="version", version=f"textkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("slug", help="print the URL slug of TEXT")
    p.add_argument("text", nargs="+")
    p.add_argument("--sep", default="-")
    p = sub.add_parser("stats", help="word statistics of a file (- for stdin)")
    p.add_argument("file")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("roman", help="convert between integers and Roman numerals")
    p.add_argument("value")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "slug":
            print(slugify(" ".join(args.text), sep=args.sep))
        elif args.command == "stats":
            if args.file == "-":
                text = sys.stdin.read()
            else:
                with open(args.file, encoding="utf-8") as fh:
                    text = fh.read()
            summary = summarize(text).as_dict()
            summary["top"] = top_words(text, args.top)
            if args.json:
                print(json.dumps(summary, indent=2))
            else:
                for key, value in summary.items():
                    print(f"{key:>9}: {value}")
        else:
            value = args.value
            print(to_roman(int(value)) if value.isdigit() else from_roman(value))
    except (OSError, ValueError, TypeError) as exc:
        print(f"textkit: error: {exc}", file=sys.stderr)
        return 1
    return 0
