"""Line coverage of a package by the unit tests, measured with the stdlib ``trace`` module.

Runs ``unittest discover`` under ``trace.Trace``, counts which executable lines
of each module ran, and writes build/coverage/summary.txt and coverage.json.
Exits 1 when a test fails or total coverage is below --fail-under.
"""

import argparse
import dis
import json
import sys
import trace
import unittest
from pathlib import Path


def executable_lines(path: Path) -> set[int]:
    """Line numbers that carry code, from the compiled module and every nested code object."""
    lines: set[int] = set()
    stack = [compile(path.read_text(encoding="utf-8"), str(path), "exec")]
    while stack:
        code = stack.pop()
        lines.update(line for _, line in dis.findlinestarts(code) if line)
        stack.extend(c for c in code.co_consts if hasattr(c, "co_code"))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--package", default="textkit")
    parser.add_argument("--tests", default="tests")
    parser.add_argument("--out", default="build/coverage")
    parser.add_argument("--fail-under", type=float, default=0.0)
    args = parser.parse_args()
    root = Path.cwd().resolve()
    sys.path.insert(0, str(root))

    result: list[unittest.TestResult] = []

    def run_tests() -> None:
        # Discovery imports the package, so it too must run under the tracer.
        suite = unittest.defaultTestLoader.discover(args.tests, top_level_dir=str(root))
        result.append(unittest.TextTestRunner(verbosity=1).run(suite))

    # No ignoredirs: trace caches its ignore decision by module base name, so an
    # ignored stdlib package's __init__.py would hide ours. Results are filtered below.
    tracer = trace.Trace(count=1, trace=0)
    tracer.runfunc(run_tests)
    counts = tracer.results().counts

    ran: dict[str, set[int]] = {}
    for (filename, line), _ in counts.items():
        ran.setdefault(str(Path(filename).resolve()), set()).add(line)
    modules = {}
    for path in sorted((root / args.package).rglob("*.py")):
        if path.name == "__main__.py":
            continue  # only runs as `python -m`
        want = executable_lines(path)
        hit = want & ran.get(str(path.resolve()), set())
        modules[str(path.relative_to(root))] = {
            "lines": len(want), "covered": len(hit), "missing": sorted(want - hit),
            "percent": round(100.0 * len(hit) / len(want), 1) if want else 100.0}
    total_lines = sum(m["lines"] for m in modules.values())
    total_hit = sum(m["covered"] for m in modules.values())
    percent = round(100.0 * total_hit / total_lines, 1) if total_lines else 100.0
    tests = result[0]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "coverage.json").write_text(json.dumps({
        "total": {"lines": total_lines, "covered": total_hit, "percent": percent},
        "tests": {"run": tests.testsRun, "failures": len(tests.failures), "errors": len(tests.errors)},
        "modules": modules}, indent=2) + "\n", encoding="utf-8")
    rows = [f"{'module':<24} {'lines':>5} {'cov':>6}  missing"]
    for name, m in modules.items():
        missing = ",".join(map(str, m["missing"][:12])) + ("..." if len(m["missing"]) > 12 else "")
        rows.append(f"{name:<24} {m['lines']:>5} {m['percent']:>5}%  {missing}")
    rows.append(f"{'TOTAL':<24} {total_lines:>5} {percent:>5}%")
    (out / "summary.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    print("\n".join(rows))

    if not tests.wasSuccessful():
        print("coverage: the tests failed", file=sys.stderr)
        return 1
    if percent < args.fail_under:
        print(f"coverage: {percent}% is below --fail-under {args.fail_under}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
