"""Fit a coding task into a model's context window.

The files the model must edit always go in whole: a truncated file cannot be
edited safely. What room is left goes to *outlines* of related files (tests,
imported local modules): signatures and first docstring lines, not bodies.

Token counts are estimates (characters per token), corrected per model by a
:class:`Calibration` learnt from the ``prompt_tokens`` servers report.
"""

from __future__ import annotations

import ast
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping, Sequence

from agentrun.agents.llm.edits import resolve_in_root
from agentrun.agents.llm.patches import UnsafePath, safe_relpath
from agentrun.agents.llm.replies import fence_for
from agentrun.errors import AgentrunError

CHARS_PER_TOKEN = {"code": 3, "prose": 4}
HEAD_LINES = 20  # lines shown of a file that has no Python outline
MAX_LINE = 200  # characters kept of one outline line
TARGETS_HEADING = "\n## Files to edit (complete contents)\n\n"
RELATED_HEADING = "\n## Related files (outlines only: signatures, not the full code)\n\n"
_CONSTANT = re.compile(r"^_*[A-Z][A-Z0-9_]*$")


def estimate_tokens(text: str, kind: str = "code") -> int:
    """Estimated tokens of ``text``: ~3 characters a token for code, ~4 for prose, rounded up."""
    try:
        per = CHARS_PER_TOKEN[kind]
    except KeyError:
        raise ValueError(f"unknown text kind {kind!r}; expected 'code' or 'prose'") from None
    return -(-len(text) // per)


# --------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """A per-model correction of :func:`estimate_tokens`, learnt from what servers report.

    ``factor`` is an exponential moving average of actual/estimated (the first
    observation is taken as it is), clamped to [``MIN_FACTOR``, ``MAX_FACTOR``].
    """

    MIN_FACTOR = 0.5
    MAX_FACTOR = 3.0

    model: str = ""
    factor: float = 1.0
    samples: int = 0
    alpha: float = 0.3

    def __post_init__(self) -> None:
        if not (isinstance(self.factor, (int, float)) and math.isfinite(self.factor)):
            raise ValueError(f"calibration factor must be a finite number, not {self.factor!r}")
        if not (isinstance(self.alpha, (int, float)) and 0 < self.alpha <= 1):
            raise ValueError(f"calibration alpha must be in (0, 1], not {self.alpha!r}")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 0:
            raise ValueError(f"calibration samples must be a non-negative integer, not {self.samples!r}")
        self.factor = self._clamp(float(self.factor))

    @classmethod
    def _clamp(cls, value: float) -> float:
        return min(cls.MAX_FACTOR, max(cls.MIN_FACTOR, value))

    def observe(self, estimated: int, actual: int) -> bool:
        """Learn from one request: our estimate of its prompt, and the server's
        ``prompt_tokens``. Returns False (and learns nothing) for unusable pairs."""
        if isinstance(estimated, bool) or isinstance(actual, bool):
            return False
        if not (isinstance(estimated, (int, float)) and isinstance(actual, (int, float))):
            return False
        if not (math.isfinite(estimated) and math.isfinite(actual)) or estimated <= 0 or actual <= 0:
            return False
        ratio = self._clamp(actual / estimated)
        self.factor = ratio if self.samples == 0 else self._clamp(
            self.alpha * ratio + (1 - self.alpha) * self.factor)
        self.samples += 1
        return True

    def apply(self, estimate: int) -> int:
        """The corrected estimate, rounded up."""
        return math.ceil(round(estimate * self.factor, 6))

    def to_dict(self) -> dict:
        return {"model": self.model, "factor": self.factor, "samples": self.samples,
                "alpha": self.alpha}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Calibration":
        """Inverse of :meth:`to_dict`; missing keys take their defaults, and a bad
        value raises ValueError (a stored factor out of range is clamped)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a calibration must be a mapping, not {type(data).__name__}")
        model = data.get("model", "")
        if not isinstance(model, str):
            raise ValueError(f"calibration model must be a string, not {model!r}")
        factor = data.get("factor", 1.0)
        if isinstance(factor, bool):
            raise ValueError(f"calibration factor must be a number, not {factor!r}")
        return cls(model=model, factor=factor, samples=data.get("samples", 0),
                   alpha=data.get("alpha", 0.3))


def _calibrated(raw: int, calibration: Calibration | None) -> int:
    return calibration.apply(raw) if calibration is not None else raw


# --------------------------------------------------------------------------- outlines


def _clip(line: str) -> str:
    return line if len(line) <= MAX_LINE else line[:MAX_LINE - 1] + "…"


def _doc_line(node: ast.AST) -> str:
    doc = ast.get_docstring(node, clean=True)  # type: ignore[arg-type]
    if not doc:
        return ""
    return doc.strip().splitlines()[0].strip()


def _function(node: ast.FunctionDef | ast.AsyncFunctionDef, indent: str) -> list[str]:
    out = [f"{indent}@{ast.unparse(d)}" for d in node.decorator_list]
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    line = f"{indent}{prefix} {node.name}({ast.unparse(node.args)}){returns}: ..."
    doc = _doc_line(node)
    out.append(line + (f"  # {doc}" if doc else ""))
    return out


def _class(node: ast.ClassDef, indent: str) -> list[str]:
    out = [f"{indent}@{ast.unparse(d)}" for d in node.decorator_list]
    bases = [ast.unparse(b) for b in node.bases] + [ast.unparse(k) for k in node.keywords]
    head = f"{indent}class {node.name}" + (f"({', '.join(bases)})" if bases else "") + ":"
    doc = _doc_line(node)
    body: list[str] = []
    inner = indent + "    "
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body += _function(item, inner)
        elif isinstance(item, ast.ClassDef):
            body += _class(item, inner)
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            body.append(f"{inner}{item.target.id}: {ast.unparse(item.annotation)}")
    if not body:
        head += " ..."
    out.append(head + (f"  # {doc}" if doc else ""))
    return out + body


def _constants(tree: ast.Module) -> list[str]:
    names: list[str] = []
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for t in targets:
            for n in ([t] if isinstance(t, ast.Name) else getattr(t, "elts", [])):
                if isinstance(n, ast.Name) and _CONSTANT.match(n.id) and n.id not in names:
                    names.append(n.id)
    return names


def _parse_python(text: str) -> ast.Module | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def outline(path: str, text: str) -> str:
    """A compact summary of a file for the model to know what it offers.

    Python (that parses): the module docstring's first line, module-level
    constant names, classes with their annotated fields and method signatures,
    top-level functions with their signatures; first docstring lines as
    comments. Anything else: the first ``HEAD_LINES`` lines.
    """
    tree = _parse_python(text) if path.endswith((".py", ".pyi")) else None
    if tree is None:
        lines = text.splitlines()
        out = [_clip(line) for line in lines[:HEAD_LINES]]
        if len(lines) > HEAD_LINES:
            out.append(f"... ({len(lines) - HEAD_LINES} more lines)")
        return "\n".join(out)
    out = []
    doc = _doc_line(tree)
    if doc:
        out.append(f'"""{doc}"""')
    constants = _constants(tree)
    if constants:
        out.append("# constants: " + ", ".join(constants))
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out += _class(node, "")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out += _function(node, "")
    return "\n".join(_clip(line) for line in out)


# --------------------------------------------------------------------------- fitting


def file_block(path: str, text: str) -> str:
    """A file as the prompt shows it: the path alone on a line, then a fenced block."""
    body = text if not text or text.endswith("\n") else text + "\n"
    fence = fence_for(body)
    return f"{path}\n{fence}\n{body}{fence}\n"


class ContextTooSmall(AgentrunError):
    """The task and the files it must edit do not fit the model's context window."""

    def __init__(self, needed: int, budget: int, *, window: int | None = None,
                 max_output: int | None = None, needed_window: int | None = None):
        self.needed = needed
        self.budget = budget
        self.window = window
        self.needed_window = needed_window
        msg = (f"the task and the files it must edit need about {needed} tokens, "
               f"but only {budget} are available")
        if window is not None and max_output is not None:
            msg += (f" (context window {window}, less {max_output} kept for the reply "
                    f"and a safety margin)")
        msg += ". Files to edit are always sent whole, never truncated"
        if needed_window is not None:
            msg += f"; use a model with a context window of at least {needed_window} tokens"
        msg += ", or split the task so that it edits fewer or smaller files."
        super().__init__(msg)


@dataclass
class Fitted:
    """What goes into the prompt, and what did not fit."""

    task: str
    targets: dict[str, str]
    outlines: list[tuple[str, str]]  # (path, outline) of the related files included
    included: list[str]
    skipped: list[str]
    tokens: int  # estimated (and calibrated) tokens of render()
    budget: int
    pieces: list[tuple[str, str]] = field(default_factory=list, repr=False)  # (text, kind)

    def render(self) -> str:
        """The prompt text the estimate was made for."""
        return "".join(text for text, _ in self.pieces)


def _margin(window: int, margin_ratio: float) -> int:
    return math.ceil(round(window * margin_ratio, 9))


def _budget(window: int, max_output: int, margin_ratio: float) -> int:
    return window - max_output - _margin(window, margin_ratio)


def _check_numbers(window: int | None, max_output: int, margin_ratio: float) -> None:
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window <= 0):
        raise ValueError(f"window must be a positive integer, not {window!r}")
    if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 0:
        raise ValueError(f"max_output must be a non-negative integer, not {max_output!r}")
    if not (isinstance(margin_ratio, (int, float)) and 0 <= margin_ratio < 1):
        raise ValueError(f"margin_ratio must be at least 0 and below 1, not {margin_ratio!r}")


def _base_pieces(task_text: str, targets: Mapping[str, str]) -> list[tuple[str, str]]:
    pieces = [(task_text if task_text.endswith("\n") else task_text + "\n", "prose")]
    if targets:
        pieces.append((TARGETS_HEADING, "prose"))
        pieces += [(file_block(path, text), "code") for path, text in targets.items()]
    return pieces


def _raw(pieces: Iterable[tuple[str, str]]) -> int:
    return sum(estimate_tokens(text, kind) for text, kind in pieces)


def needed_window(task_text: str, targets: Mapping[str, str], max_output: int, *,
                  margin_ratio: float = 0.1, calibration: Calibration | None = None) -> int:
    """The smallest context window for which :func:`fit_context` accepts this task
    and these target files (with no room to spare for related files)."""
    _check_numbers(None, max_output, margin_ratio)
    need = _calibrated(_raw(_base_pieces(task_text, targets)), calibration)
    window = max(1, math.ceil((need + max_output) / (1 - margin_ratio)))
    while window > 1 and _budget(window - 1, max_output, margin_ratio) >= need:
        window -= 1
    while _budget(window, max_output, margin_ratio) < need:
        window += 1
    return window


def fit_context(task_text: str, targets: Mapping[str, str], related: Sequence[tuple[str, str]],
                window: int, max_output: int, margin_ratio: float = 0.1,
                calibration: Calibration | None = None) -> Fitted:
    """Choose what to send: the task and the full target files, then outlines of
    ``related`` files in their priority order while they fit.

    The budget is ``window - max_output - ceil(window * margin_ratio)``. Raises
    :class:`ContextTooSmall` if the task and the targets alone exceed it. A
    related outline that does not fit is skipped and the next (perhaps smaller)
    one is tried; related files that are targets or repeats are ignored.
    """
    _check_numbers(window, max_output, margin_ratio)
    budget = _budget(window, max_output, margin_ratio)
    pieces = _base_pieces(task_text, targets)
    raw = _raw(pieces)
    needed = _calibrated(raw, calibration)
    if needed > budget:
        raise ContextTooSmall(needed, budget, window=window, max_output=max_output,
                              needed_window=needed_window(task_text, targets, max_output,
                                                          margin_ratio=margin_ratio,
                                                          calibration=calibration))
    outlines: list[tuple[str, str]] = []
    included: list[str] = []
    skipped: list[str] = []
    seen = set(targets)
    for path, text in related:
        if path in seen:
            continue
        seen.add(path)
        summary = outline(path, text)
        extra = [(file_block(path, summary), "code")]
        if not outlines:
            extra.insert(0, (RELATED_HEADING, "prose"))
        cost = _raw(extra)
        if _calibrated(raw + cost, calibration) <= budget:
            raw += cost
            pieces += extra
            outlines.append((path, summary))
            included.append(path)
        else:
            skipped.append(path)
    return Fitted(task_text, dict(targets), outlines, included, skipped,
                  _calibrated(raw, calibration), budget, pieces)


# --------------------------------------------------------------------------- related files


def _existing(real_root: Path, rel: str) -> str | None:
    """``rel`` normalised if it is a regular file inside the root, else None."""
    try:
        rel = safe_relpath(rel)
        return rel if resolve_in_root(real_root, rel).is_file() else None
    except (UnsafePath, OSError):
        return None


def _test_files(real_root: Path, target: str) -> list[str]:
    p = PurePosixPath(target)
    name = p.parent.name if p.stem == "__init__" else p.stem
    if not name or name.startswith("test_") or p.name == "conftest.py":
        return []
    found = []
    candidates = [f"tests/test_{name}.py", str(p.parent / f"test_{name}.py")]
    tests_dir = real_root / "tests"
    if tests_dir.is_dir():
        candidates += sorted(f.relative_to(real_root).as_posix()
                             for f in tests_dir.rglob(f"test_{name}*.py"))
    for cand in candidates:
        rel = _existing(real_root, cand)
        if rel is not None and rel not in found:
            found.append(rel)
    return found


def _module_file(real_root: Path, prefixes: Sequence[tuple[str, ...]], parts: Sequence[str]) -> str | None:
    for prefix in prefixes:
        base = "/".join((*prefix, *parts))
        candidates = ([f"{base}.py"] if parts else []) + [f"{base}/__init__.py" if base else "__init__.py"]
        for cand in candidates:
            rel = _existing(real_root, cand)
            if rel is not None:
                return rel
    return None


def _imports(real_root: Path, target: str) -> list[str]:
    try:
        text = resolve_in_root(real_root, target).read_text(encoding="utf-8")
    except (UnsafePath, OSError, UnicodeDecodeError):
        return []
    tree = _parse_python(text)
    if tree is None:
        return []
    nodes = sorted((n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))),
                   key=lambda n: (n.lineno, n.col_offset))
    absolute = [(), ("src",)]
    package = PurePosixPath(target).parent.parts
    found: list[str] = []

    def add(rel: str | None) -> None:
        if rel is not None and rel not in found:
            found.append(rel)

    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(_module_file(real_root, absolute, alias.name.split(".")))
            continue
        if node.level:
            if node.level - 1 > len(package):
                continue
            prefixes = [package[:len(package) - (node.level - 1)]]
        else:
            prefixes = absolute
        parts = node.module.split(".") if node.module else []
        for alias in node.names:
            if alias.name != "*":
                sub = _module_file(real_root, prefixes, [*parts, alias.name])
                if sub is not None:
                    add(sub)
                    continue
            add(_module_file(real_root, prefixes, parts))
    return found


def related_files(root: Path, targets: Iterable[str]) -> list[str]:
    """Files worth showing (as outlines) with the Python ``targets``, most useful first.

    For each target in order: its tests (``tests/test_<name>.py``,
    ``<dir>/test_<name>.py``, then ``tests/**/test_<name>*.py`` sorted), then the
    local modules it imports, in source order, resolved against ``root`` (and
    ``root/src``). Paths are relative to ``root``; targets, repeats, files
    outside the root and non-Python targets contribute nothing.
    """
    real_root = Path(root).resolve()
    wanted = []
    for t in targets:
        try:
            wanted.append(safe_relpath(t))
        except UnsafePath:
            continue
    seen = set(wanted)
    out: list[str] = []
    for target in wanted:
        if not target.endswith(".py"):
            continue
        for rel in _test_files(real_root, target) + _imports(real_root, target):
            if rel not in seen:
                seen.add(rel)
                out.append(rel)
    return out
