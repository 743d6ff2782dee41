import unittest

from textkit.stats import reading_time, summarize, top_words, word_count, words

TEXT = "The cat sat. The cat ran!\nIt's a dog's life, isn't it?"


class StatsTest(unittest.TestCase):
    def test_words(self):
        self.assertEqual(words("It's 2 o'clock"), ["it's", "2", "o'clock"])

    def test_word_count(self):
        self.assertEqual(word_count(TEXT), 12)
        self.assertEqual(word_count(""), 0)

    def test_top_words(self):
        self.assertEqual(top_words(TEXT, 2), [("cat", 2), ("the", 2)])

    def test_reading_time(self):
        self.assertEqual(reading_time(""), 0)
        self.assertEqual(reading_time("word"), 1)
        self.assertEqual(reading_time("word " * 1000), 5)

    def test_summarize(self):
        s = summarize(TEXT)
        self.assertEqual((s.words, s.unique, s.lines, s.sentences, s.minutes), (12, 10, 2, 3, 1))
        self.assertEqual(s.as_dict()["words"], 12)


if __name__ == "__main__":
    unittest.main()
