import contextlib
import io
import json
import os
import tempfile
import unittest

from textkit.cli import main


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


class CliTest(unittest.TestCase):
    def test_slug(self):
        self.assertEqual(run("slug", "Hello,", "World!"), (0, "hello-world\n", ""))

    def test_roman_both_ways(self):
        self.assertEqual(run("roman", "1987")[1], "MCMLXXXVII\n")
        self.assertEqual(run("roman", "MCMLXXXVII")[1], "1987\n")

    def test_roman_error(self):
        code, _, err = run("roman", "XYZ")
        self.assertEqual(code, 1)
        self.assertIn("not a Roman numeral", err)

    def test_stats_json(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "t.txt")
            with open(path, "w", encoding="utf-8") as fh:
                fh.write("one two two\nthree.\n")
            code, out, _ = run("stats", path, "--json", "--top", "1")
        self.assertEqual(code, 0)
        data = json.loads(out)
        self.assertEqual(data["words"], 4)
        self.assertEqual(data["top"], [["two", 2]])

    def test_stats_text_and_missing_file(self):
        code, _, err = run("stats", "/nonexistent/file.txt")
        self.assertEqual(code, 1)
        self.assertIn("error", err)


if __name__ == "__main__":
    unittest.main()
