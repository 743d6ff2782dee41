import unittest

from textkit.slug import normalize, slugify, unique_slug


class SlugifyTest(unittest.TestCase):
    def test_basic(self):
        self.assertEqual(slugify("Hello, World!"), "hello-world")

    def test_accents_are_folded(self):
        self.assertEqual(slugify("Crème brûlée à Paris"), "creme-brulee-a-paris")
        self.assertEqual(normalize("naïve"), "naive")

    def test_separator(self):
        self.assertEqual(slugify("a b  c", sep="_"), "a_b_c")

    def test_max_length_cuts_at_a_word(self):
        self.assertEqual(slugify("hello wonderful world", max_length=12), "hello")
        self.assertEqual(slugify("hello wonderful world", max_length=15), "hello-wonderful")
        self.assertEqual(slugify("supercalifragilistic", max_length=5), "super")

    def test_empty(self):
        self.assertEqual(slugify("  !!  "), "")

    def test_unique(self):
        taken = {"report", "report-2"}
        self.assertEqual(unique_slug("Report", taken), "report-3")
        self.assertEqual(unique_slug("???", set()), "item")


if __name__ == "__main__":
    unittest.main()
