"""Stand-in for a coding agent: write tests that check textkit.stats against data/fixtures.json."""

import json
import sys
from pathlib import Path

FIXTURES = Path("data/fixtures.json")
TEST_FILE = Path("tests/test_stats_fixtures.py")

TEMPLATE = '''"""textkit.stats against the corpus in data/fixtures.json (written by fetch-fixtures)."""

import json
import unittest
from pathlib import Path

from textkit.stats import summarize, top_words

FIXTURES = Path(__file__).resolve().parent.parent / "data" / "fixtures.json"


@unittest.skipUnless(FIXTURES.is_file(), "data/fixtures.json not fetched")
class StatsFixturesTest(unittest.TestCase):
    def test_documents(self):
        documents = json.loads(FIXTURES.read_text(encoding="utf-8"))["documents"]
        self.assertGreaterEqual(len(documents), {count})
        for doc in documents:
            with self.subTest(doc=doc["name"]):
                summary = summarize(doc["text"])
                self.assertEqual(summary.words, doc["words"])
                self.assertEqual(summary.unique, doc["unique"])
                self.assertEqual(summary.sentences, doc["sentences"])
                top = top_words(doc["text"], 1)
                self.assertEqual([list(t) for t in top], [doc["top"]] if doc["top"] else [])


if __name__ == "__main__":
    unittest.main()
'''


def main() -> int:
    if not FIXTURES.is_file():
        print(f"{FIXTURES} is missing: run the fetch-fixtures workstream first", file=sys.stderr)
        return 1
    count = len(json.loads(FIXTURES.read_text(encoding="utf-8"))["documents"])
    TEST_FILE.write_text(TEMPLATE.format(count=count), encoding="utf-8")
    print(f"wrote {TEST_FILE} covering {count} fixture documents")
    return 0


if __name__ == "__main__":
    sys.exit(main())
