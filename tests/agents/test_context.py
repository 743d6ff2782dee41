"""Fitting a coding task into a context window: token estimates, calibration, outlines, related files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentrun.agents.llm.context import (
    HEAD_LINES,
    Calibration,
    ContextTooSmall,
    estimate_tokens,
    file_block,
    fit_context,
    needed_window,
    outline,
    related_files,
)
from agentrun.errors import AgentrunError

# --------------------------------------------------------------------------- estimate_tokens


@pytest.mark.parametrize("text, kind, tokens", [
    ("", "code", 0), ("", "prose", 0),
    ("abc", "code", 1), ("abcd", "code", 2), ("abcdef", "code", 2),
    ("abcd", "prose", 1), ("abcde", "prose", 2),
])
def test_estimate_is_chars_per_token_rounded_up(text, kind, tokens):
    assert estimate_tokens(text, kind) == tokens


def test_estimate_defaults_to_code():
    assert estimate_tokens("x" * 9) == 3


def test_estimate_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown text kind"):
        estimate_tokens("x", "poetry")


@given(st.text(max_size=200))
def test_code_never_estimates_fewer_tokens_than_prose(text):
    assert estimate_tokens(text, "code") >= estimate_tokens(text, "prose")
    assert estimate_tokens(text, "code") == math.ceil(len(text) / 3)


# --------------------------------------------------------------------------- calibration


def test_calibration_starts_neutral():
    cal = Calibration("m")
    assert cal.factor == 1.0 and cal.apply(100) == 100


def test_first_observation_sets_the_factor():
    cal = Calibration("m")
    assert cal.observe(100, 150)
    assert cal.factor == pytest.approx(1.5)
    assert cal.samples == 1


def test_later_observations_are_an_exponential_moving_average():
    cal = Calibration("m", alpha=0.5)
    cal.observe(100, 100)
    cal.observe(100, 200)
    assert cal.factor == pytest.approx(1.5)
    cal.observe(100, 200)
    assert cal.factor == pytest.approx(1.75)


@pytest.mark.parametrize("estimated, actual, factor", [(100, 10, 0.5), (100, 1000, 3.0)])
def test_factor_is_clamped(estimated, actual, factor):
    cal = Calibration("m")
    cal.observe(estimated, actual)
    assert cal.factor == factor


@pytest.mark.parametrize("estimated, actual", [
    (0, 10), (10, 0), (-5, 10), (10, float("nan")), (True, 10), (10, None), (float("inf"), 5),
])
def test_unusable_observations_are_ignored(estimated, actual):
    cal = Calibration("m", factor=1.2)
    assert cal.observe(estimated, actual) is False
    assert cal.factor == 1.2 and cal.samples == 0


def test_apply_rounds_up():
    assert Calibration(factor=1.5).apply(3) == 5
    assert Calibration(factor=2.0).apply(3) == 6


@given(st.floats(0.5, 3.0), st.integers(0, 1000), st.floats(0.01, 1.0), st.text(max_size=20))
def test_calibration_survives_a_json_round_trip(factor, samples, alpha, model):
    cal = Calibration(model, factor, samples, alpha)
    again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert again == cal


def test_from_dict_fills_missing_keys_and_clamps_the_factor():
    cal = Calibration.from_dict({"model": "m", "factor": 9})
    assert cal.factor == 3.0 and cal.samples == 0 and cal.alpha == 0.3


@pytest.mark.parametrize("data", [
    [], {"factor": "big"}, {"factor": float("nan")}, {"factor": True}, {"samples": -1},
    {"alpha": 0}, {"model": 3},
])
def test_from_dict_rejects_bad_values(data):
    with pytest.raises(ValueError):
        Calibration.from_dict(data)


@given(st.lists(st.tuples(st.integers(1, 10_000), st.integers(1, 10_000)), max_size=20))
def test_factor_stays_in_range_whatever_is_observed(pairs):
    cal = Calibration("m")
    for est, act in pairs:
        cal.observe(est, act)
    assert Calibration.MIN_FACTOR <= cal.factor <= Calibration.MAX_FACTOR
    assert cal.samples == len(pairs)


# --------------------------------------------------------------------------- outline

PY = '''"""Tools for widgets.

More detail here.
"""
import os

MAX_SIZE = 10
_PRIVATE_LIMIT: int = 3
lower = 1
A, B = 1, 2


@dataclass
class Widget(Base, metaclass=Meta):
    """A widget.

    Long story.
    """
    name: str
    size: int = 0

    def grow(self, by: int = 1) -> int:
        """Grow it."""
        secret_body_marker = 1
        return self.size + by

    @property
    def area(self):
        return self.size ** 2

    class Inner:
        def deep(self): pass


class Empty:
    pass


async def fetch(url: str, *, timeout: float = 5.0) -> bytes:
    """Fetch a URL."""
    return b""


def helper(*args, **kwargs):
    return None
'''


def test_python_outline_lists_signatures_not_bodies():
    out = outline("pkg/widgets.py", PY)
    assert out.splitlines() == [
        '"""Tools for widgets."""',
        "# constants: MAX_SIZE, _PRIVATE_LIMIT, A, B",
        "@dataclass",
        "class Widget(Base, metaclass=Meta):  # A widget.",
        "    name: str",
        "    size: int",
        "    def grow(self, by: int=1) -> int: ...  # Grow it.",
        "    @property",
        "    def area(self): ...",
        "    class Inner:",
        "        def deep(self): ...",
        "class Empty: ...",
        "async def fetch(url: str, *, timeout: float=5.0) -> bytes: ...  # Fetch a URL.",
        "def helper(*args, **kwargs): ...",
    ]
    assert "secret_body_marker" not in out and "import os" not in out


def test_outline_of_non_python_file_is_its_head():
    text = "".join(f"line {n}\n" for n in range(1, 31))
    out = outline("notes.md", text).splitlines()
    assert out[:HEAD_LINES] == [f"line {n}" for n in range(1, HEAD_LINES + 1)]
    assert out[-1] == f"... ({30 - HEAD_LINES} more lines)"
    assert len(out) == HEAD_LINES + 1


def test_outline_of_short_non_python_file_is_the_whole_file():
    assert outline("a.toml", "x = 1\ny = 2\n") == "x = 1\ny = 2"


def test_outline_of_python_that_does_not_parse_falls_back_to_the_head():
    assert outline("bad.py", "def (:\n    pass\n") == "def (:\n    pass"


def test_outline_clips_very_long_lines():
    out = outline("min.js", "x" * 5000)
    assert len(out) == 200 and out.endswith("…")


def test_outline_of_empty_python_file_is_empty():
    assert outline("e.py", "") == ""


# --------------------------------------------------------------------------- fit_context

TASK = "Make main() return 2."
TARGET = {"src/app.py": "def main():\n    return 1\n"}


def test_targets_are_sent_whole_and_the_estimate_matches_the_rendering():
    fitted = fit_context(TASK, TARGET, [], window=10_000, max_output=1_000)
    text = fitted.render()
    assert text.startswith(TASK + "\n")
    assert file_block("src/app.py", TARGET["src/app.py"]) in text
    assert fitted.tokens == sum(estimate_tokens(t, k) for t, k in fitted.pieces)
    assert fitted.tokens >= estimate_tokens(text, "prose")
    assert fitted.budget == 10_000 - 1_000 - 1_000
    assert fitted.included == [] and fitted.skipped == []


def test_related_files_go_in_as_outlines_in_priority_order():
    related = [("tests/test_app.py", "def test_main():\n    assert main() == 2\n"),
               ("src/util.py", "def helper(x):\n    return x * 2\n")]
    fitted = fit_context(TASK, TARGET, related, window=10_000, max_output=1_000)
    assert fitted.included == ["tests/test_app.py", "src/util.py"]
    text = fitted.render()
    assert "def test_main(): ..." in text and "assert main() == 2" not in text
    assert text.index("tests/test_app.py") < text.index("src/util.py")
    assert "Related files" in text


def test_related_outlines_stop_at_the_budget_and_smaller_ones_still_fit():
    big = "\n".join(f"def function_number_{n}(argument): pass" for n in range(200))
    small = "def tiny(): pass\n"
    base = fit_context(TASK, TARGET, [], window=100_000, max_output=0, margin_ratio=0).tokens
    window = base + 60
    fitted = fit_context(TASK, TARGET, [("big.py", big), ("small.py", small)], window=window,
                         max_output=0, margin_ratio=0)
    assert fitted.skipped == ["big.py"]
    assert fitted.included == ["small.py"]
    assert fitted.tokens <= fitted.budget


def test_related_entries_that_are_targets_or_repeats_are_ignored():
    related = [("src/app.py", "x = 1\n"), ("b.py", "y = 1\n"), ("b.py", "y = 1\n")]
    fitted = fit_context(TASK, TARGET, related, window=10_000, max_output=0)
    assert fitted.included == ["b.py"] and fitted.skipped == []


def test_targets_that_do_not_fit_raise_context_too_small():
    targets = {"big.py": "x = 1\n" * 2_000}
    with pytest.raises(ContextTooSmall) as exc:
        fit_context(TASK, targets, [], window=4_000, max_output=1_000)
    err = exc.value
    assert err.budget == 4_000 - 1_000 - 400
    assert err.needed > err.budget
    assert err.needed_window == needed_window(TASK, targets, 1_000)
    assert isinstance(err, AgentrunError)
    message = str(err)
    assert f"need about {err.needed} tokens" in message
    assert "never truncated" in message and str(err.needed_window) in message


def test_calibration_scales_the_estimate():
    plain = fit_context(TASK, TARGET, [], window=10_000, max_output=0)
    doubled = fit_context(TASK, TARGET, [], window=10_000, max_output=0, calibration=Calibration(factor=2.0))
    assert doubled.tokens == 2 * plain.tokens


def test_calibration_can_make_targets_not_fit():
    targets = {"a.py": "x = 1\n" * 100}
    window = needed_window(TASK, targets, 0)
    fit_context(TASK, targets, [], window=window, max_output=0)
    with pytest.raises(ContextTooSmall):
        fit_context(TASK, targets, [], window=window, max_output=0, calibration=Calibration(factor=1.5))


def test_file_content_with_fences_gets_a_longer_fence():
    block = file_block("README.md", "```\ncode\n```\n")
    assert block == "README.md\n````\n```\ncode\n```\n````\n"


@pytest.mark.parametrize("kwargs", [
    {"window": 0}, {"window": -1}, {"max_output": -1}, {"margin_ratio": 1.0}, {"margin_ratio": -0.1},
    {"window": 10.5},
])
def test_bad_numbers_are_rejected(kwargs):
    args = {"window": 1000, "max_output": 100, "margin_ratio": 0.1, **kwargs}
    with pytest.raises(ValueError):
        fit_context(TASK, TARGET, [], **args)


def test_budget_consumed_by_reply_reservation_raises():
    with pytest.raises(ContextTooSmall):
        fit_context(TASK, TARGET, [], window=1_000, max_output=1_000)


file_maps = st.dictionaries(st.from_regex(r"[a-z]{1,6}\.py", fullmatch=True), st.text(max_size=300), max_size=3)


@given(st.text(max_size=200), file_maps, st.integers(0, 2_000), st.sampled_from([0.0, 0.05, 0.1, 0.25]))
def test_needed_window_is_the_smallest_window_that_fits(task, targets, max_output, ratio):
    window = needed_window(task, targets, max_output, margin_ratio=ratio)
    fitted = fit_context(task, targets, [], window=window, max_output=max_output, margin_ratio=ratio)
    assert fitted.tokens <= fitted.budget
    if window > 1:
        with pytest.raises(ContextTooSmall):
            fit_context(task, targets, [], window=window - 1, max_output=max_output, margin_ratio=ratio)


@given(file_maps, st.lists(st.tuples(st.from_regex(r"r[a-z]{0,5}\.py", fullmatch=True),
                                      st.text(max_size=400)), max_size=6),
       st.integers(200, 3_000))
def test_fitted_never_exceeds_budget_and_accounts_for_every_related_file(targets, related, window):
    try:
        fitted = fit_context(TASK, targets, related, window=window, max_output=100)
    except ContextTooSmall as exc:
        assert exc.needed > exc.budget
        return
    assert fitted.tokens <= fitted.budget
    distinct = list(dict.fromkeys(p for p, _ in related if p not in targets))
    assert sorted(fitted.included + fitted.skipped) == sorted(distinct)
    assert [p for p in distinct if p in fitted.included] == fitted.included


# --------------------------------------------------------------------------- related_files


def make_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_related_files_finds_tests_then_imports_in_order(tmp_path):
    make_tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/core.py": (
            "import os\n"
            "import pkg.util\n"
            "from .helpers import helper\n"
            "from pkg import sub\n"
            "from pkg.models import Model, OTHER\n"
            "from . import missing_name\n"
            "def f():\n    import pkg.late\n"
        ),
        "pkg/util.py": "", "pkg/helpers.py": "", "pkg/sub/__init__.py": "", "pkg/models.py": "",
        "pkg/late.py": "",
        "tests/test_core.py": "", "pkg/test_core.py": "", "tests/unit/test_core_edge.py": "",
        "tests/unit/test_corexyz.py": "", "tests/test_other.py": "",
    })
    assert related_files(tmp_path, ["pkg/core.py"]) == [
        "tests/test_core.py", "pkg/test_core.py", "tests/unit/test_core_edge.py", "tests/unit/test_corexyz.py",
        "pkg/util.py", "pkg/helpers.py", "pkg/sub/__init__.py", "pkg/models.py", "pkg/__init__.py",
        "pkg/late.py",
    ]


def test_related_files_resolves_src_layout_and_parent_relative_imports(tmp_path):
    make_tree(tmp_path, {
        "src/lib/__init__.py": "", "src/lib/a/__init__.py": "", "src/lib/base.py": "",
        "src/lib/a/mod.py": "from ..base import B\nimport lib.base\nfrom ... import nothing\n",
    })
    assert related_files(tmp_path, ["src/lib/a/mod.py"]) == ["src/lib/base.py"]


def test_related_files_of_package_init_uses_the_package_name_for_tests(tmp_path):
    make_tree(tmp_path, {"pkg/__init__.py": "", "tests/test_pkg.py": ""})
    assert related_files(tmp_path, ["pkg/__init__.py"]) == ["tests/test_pkg.py"]


def test_related_files_excludes_targets_and_repeats(tmp_path):
    make_tree(tmp_path, {"a.py": "import b\nimport c\n", "b.py": "import c\n", "c.py": ""})
    assert related_files(tmp_path, ["a.py", "b.py"]) == ["c.py"]


def test_related_files_of_non_python_targets_is_empty(tmp_path):
    make_tree(tmp_path, {"README.md": "", "tests/test_README.py": ""})
    assert related_files(tmp_path, ["README.md"]) == []


def test_related_files_of_a_new_file_still_finds_its_tests(tmp_path):
    make_tree(tmp_path, {"tests/test_fresh.py": ""})
    assert related_files(tmp_path, ["fresh.py"]) == ["tests/test_fresh.py"]


def test_related_files_ignores_symlinks_leading_outside(tmp_path):
    root = tmp_path / "root"
    make_tree(root, {"a.py": "import ext\n"})
    make_tree(tmp_path, {"ext.py": "SECRET = 1\n"})
    (root / "ext.py").symlink_to(tmp_path / "ext.py")
    assert related_files(root, ["a.py"]) == []


def test_related_files_survives_unparsable_and_unsafe_targets(tmp_path):
    make_tree(tmp_path, {"bad.py": "def (:\n", "tests/test_bad.py": ""})
    assert related_files(tmp_path, ["bad.py", "../x.py", "/etc/x.py"]) == ["tests/test_bad.py"]


def test_related_files_is_deterministic(tmp_path):
    make_tree(tmp_path, {"m.py": "", **{f"tests/sub{n}/test_m_{n}.py": "" for n in range(8)}})
    first = related_files(tmp_path, ["m.py"])
    assert first == sorted(first)
    assert first == related_files(tmp_path, ["m.py"])
    assert len(first) == 8
