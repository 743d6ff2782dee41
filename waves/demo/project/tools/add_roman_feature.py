"""Stand-in for a coding agent that writes a feature WITH A BUG, plus a test that catches it.

Adds ``is_roman()`` to textkit/roman.py. Its regular expression allows at
most two trailing I's (``I{0,2}``), so "III", "VIII", "XIII"... are wrongly
rejected; tests/test_roman_valid.py checks every numeral from 1 to 3999 and
fails. The demo's gate (the unit tests) therefore rejects this workstream.
"""

import sys
from pathlib import Path

MODULE = Path("textkit/roman.py")
TEST_FILE = Path("tests/test_roman_valid.py")

FEATURE = '''

_CANONICAL = re.compile(r"^M{0,3}(CM|CD|D?C{0,3})(XC|XL|L?X{0,3})(IX|IV|V?I{0,2})$")


def is_roman(text: str) -> bool:
    """Whether ``text`` is a canonical Roman numeral for 1..3999 (case-insensitive)."""
    text = text.strip().upper()
    return bool(text) and _CANONICAL.match(text) is not None
'''

TEST = '''import unittest

from textkit.roman import is_roman, to_roman


class IsRomanTest(unittest.TestCase):
    def test_every_canonical_numeral(self):
        for number in range(1, 4000):
            self.assertTrue(is_roman(to_roman(number)), f"{to_roman(number)} ({number}) rejected")

    def test_rejects(self):
        for bad in ("", "IIII", "IC", "MMMM", "ABC"):
            with self.subTest(bad=bad):
                self.assertFalse(is_roman(bad))


if __name__ == "__main__":
    unittest.main()
'''


def main() -> int:
    source = MODULE.read_text(encoding="utf-8")
    if "def is_roman" not in source:
        if "\nimport re\n" not in source:
            # Anchor: right after the module docstring (the first line).
            head, rest = source.split("\n", 1)
            source = f"{head}\n\nimport re\n{rest}"
        source = source.rstrip("\n") + "\n" + FEATURE
        compile(source, str(MODULE), "exec")
        MODULE.write_text(source, encoding="utf-8")
    TEST_FILE.write_text(TEST, encoding="utf-8")
    print(f"added is_roman() to {MODULE} and {TEST_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
