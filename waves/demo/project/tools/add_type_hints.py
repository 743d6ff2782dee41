"""Stand-in for a coding agent: add type hints to the functions of textkit/slug.py.

Edits by anchors that survive other edits (``def NAME(`` up to the colon that
ends the signature, and the last top-level import), so it works whether or
not add_docstrings.py ran first. Idempotent.
"""

import ast
import re
import sys
from pathlib import Path

SIGNATURES = {
    "normalize": ("text: str", "str"),
    "slugify": ('text: str, sep: str = "-", max_length: int | None = None', "str"),
    "unique_slug": ('text: str, taken: Container[str], sep: str = "-"', "str"),
}
IMPORT = "from collections.abc import Container"


def add_hints(source: str) -> tuple[str, list[str]]:
    done = []
    for name, (params, returns) in SIGNATURES.items():
        pattern = re.compile(rf"^(?P<indent>[ \t]*)def {name}\((?P<params>.*?)\)(?P<ret>\s*->[^:]+)?:",
                             re.M | re.S)
        match = pattern.search(source)
        if match is None or match.group("ret"):
            continue  # not there, or already annotated
        new = f"{match.group('indent')}def {name}({params}) -> {returns}:"
        source = source[:match.start()] + new + source[match.end():]
        done.append(name)
    if done and IMPORT not in source:
        tree = ast.parse(source)
        imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        lines = source.splitlines(keepends=True)
        at = imports[-1].end_lineno if imports else 0
        lines.insert(at, IMPORT + "\n")
        source = "".join(lines)
    return source, done


def main(paths: list[str]) -> int:
    for path in paths:
        file = Path(path)
        new, names = add_hints(file.read_text(encoding="utf-8"))
        compile(new, path, "exec")  # never write a broken file
        file.write_text(new, encoding="utf-8")
        print(f"{path}: annotated {', '.join(names) or 'nothing (already annotated)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["textkit/slug.py"]))
