"""Stand-in for a coding agent: add docstrings to the functions of a module that lack one.

Finds functions with ``ast`` rather than by line number, so it works whether or
not add_type_hints.py has already rewritten the signatures. Idempotent.
"""

import ast
import sys
from pathlib import Path

DOCSTRINGS = {
    "normalize": "``text`` with accents folded to ASCII (\"é\" -> \"e\"); other non-ASCII is dropped.",
    "slugify": "The URL slug of ``text``: its lower-case ASCII words joined by ``sep``.\n\n"
               "With ``max_length``, the slug is cut at a word boundary when there is one.",
    "unique_slug": "A slug for ``text`` that is not in ``taken``: ``base``, then ``base-2``, ``base-3``...",
}


def add_docstrings(source: str) -> tuple[str, list[str]]:
    lines = source.splitlines(keepends=True)
    inserts = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or ast.get_docstring(node):
            continue
        doc = DOCSTRINGS.get(node.name)
        first = node.body[0]
        if doc is None or first.lineno == node.lineno:  # unknown, or a one-line def
            continue
        indent = " " * first.col_offset
        body = doc.replace("\n", "\n" + indent).replace(indent + "\n", "\n")
        closing = f"\n{indent}\"\"\"" if "\n" in doc else '"""'
        inserts.append((first.lineno - 1, f'{indent}"""{body}{closing}\n', node.name))
    for index, text, _ in sorted(inserts, reverse=True):
        lines.insert(index, text)
    return "".join(lines), sorted(name for _, _, name in inserts)


def main(paths: list[str]) -> int:
    for path in paths:
        file = Path(path)
        new, names = add_docstrings(file.read_text(encoding="utf-8"))
        compile(new, path, "exec")  # never write a broken file
        file.write_text(new, encoding="utf-8")
        print(f"{path}: added docstrings to {', '.join(names) or 'nothing (all documented)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["textkit/slug.py"]))
