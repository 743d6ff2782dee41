"""A tiny style checker: syntax, tabs, trailing whitespace, line length, final newline."""

import argparse
import ast
import sys
from pathlib import Path


def check(path: Path, max_length: int) -> list[str]:
    text = path.read_text(encoding="utf-8")
    problems = []
    try:
        ast.parse(text, str(path))
    except SyntaxError as exc:
        return [f"{path}:{exc.lineno}: syntax error: {exc.msg}"]
    for number, line in enumerate(text.splitlines(), 1):
        if "\t" in line:
            problems.append(f"{path}:{number}: tab character")
        if line != line.rstrip():
            problems.append(f"{path}:{number}: trailing whitespace")
        if len(line) > max_length:
            problems.append(f"{path}:{number}: line too long ({len(line)} > {max_length})")
    if text and not text.endswith("\n"):
        problems.append(f"{path}: no newline at end of file")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("--max-length", type=int, default=110)
    parser.add_argument("--report", default="build/lint/report.txt")
    args = parser.parse_args()
    files = sorted(p for d in args.dirs for p in Path(d).rglob("*.py") if "__pycache__" not in p.parts)
    problems = [p for f in files for p in check(f, args.max_length)]
    verdict = f"lint: {len(files)} files, {len(problems)} problems"
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(problems + [verdict]) + "\n", encoding="utf-8")
    print("\n".join(problems + [verdict]))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
