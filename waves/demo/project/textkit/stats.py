"""Word statistics for plain text."""

import re
from collections import Counter
from dataclasses import dataclass

WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")
WORDS_PER_MINUTE = 200


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased, in order."""
    return [w.lower() for w in WORD.findall(text)]


def word_count(text: str) -> int:
    """How many words ``text`` holds."""
    return len(words(text))


def top_words(text: str, n: int = 5) -> list[tuple[str, int]]:
    """The ``n`` most frequent words, most frequent first, ties alphabetically."""
    counts = Counter(words(text))
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def reading_time(text: str, wpm: int = WORDS_PER_MINUTE) -> int:
    """Whole minutes needed to read ``text``; at least 1 for non-empty text."""
    count = word_count(text)
    if count == 0:
        return 0
    return max(1, round(count / wpm))


@dataclass(frozen=True)
class Summary:
    words: int
    unique: int
    lines: int
    sentences: int
    minutes: int

    def as_dict(self) -> dict[str, int]:
        """The summary as a plain dictionary."""
        return dict(self.__dict__)


def summarize(text: str) -> Summary:
    """Counts of words, distinct words, lines and sentences, and reading time."""
    ws = words(text)
    sentences = len([s for s in re.split(r"[.!?]+", text) if s.strip()])
    lines = len(text.splitlines())
    return Summary(len(ws), len(set(ws)), lines, sentences, reading_time(text))
