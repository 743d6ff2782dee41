"""textkit: small, dependency-free text utilities."""

from .roman import from_roman, to_roman
from .slug import slugify
from .stats import summarize, word_count

__all__ = ["from_roman", "slugify", "summarize", "to_roman", "word_count"]
__version__ = "0.3.0"
