"""Turn arbitrary titles into URL slugs."""

import re
import unicodedata

_NON_WORD = re.compile(r"[^a-z0-9]+")


def normalize(text):
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def slugify(text, sep="-", max_length=None):
    words = [w for w in _NON_WORD.split(normalize(text).lower()) if w]
    slug = sep.join(words)
    if max_length is not None and len(slug) > max_length:
        cut = slug[:max_length + 1]
        slug = cut.rsplit(sep, 1)[0] if sep and sep in cut else slug[:max_length]
    return slug


def unique_slug(text, taken, sep="-"):
    base = slugify(text, sep=sep) or "item"
    slug, n = base, 2
    while slug in taken:
        slug = f"{base}{sep}{n}"
        n += 1
    return slug
