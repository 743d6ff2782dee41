"""Roman numerals: integers 1..3999 to numerals and back."""

NUMERALS = (
    (1000, "M"), (900, "CM"), (500, "D"), (400, "CD"),
    (100, "C"), (90, "XC"), (50, "L"), (40, "XL"),
    (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"),
)
VALUES = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}


def to_roman(number: int) -> str:
    """``number`` (1..3999) as a Roman numeral."""
    if isinstance(number, bool) or not isinstance(number, int):
        raise TypeError(f"expected an int, got {type(number).__name__}")
    if not 0 < number < 4000:
        raise ValueError(f"{number} is out of range (1..3999)")
    out = []
    for value, symbol in NUMERALS:
        count, number = divmod(number, value)
        out.append(symbol * count)
    return "".join(out)


def from_roman(numeral: str) -> int:
    """The integer a canonical Roman numeral stands for."""
    text = numeral.strip().upper()
    if not text or any(ch not in VALUES for ch in text):
        raise ValueError(f"{numeral!r} is not a Roman numeral")
    total = 0
    for ch, nxt in zip(text, text[1:] + " "):
        value = VALUES[ch]
        total += -value if nxt != " " and VALUES[nxt] > value else value
    if to_roman(total) != text:
        raise ValueError(f"{numeral!r} is not a canonical Roman numeral")
    return total
