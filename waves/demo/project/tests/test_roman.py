import unittest

from textkit.roman import from_roman, to_roman


class RomanTest(unittest.TestCase):
    def test_known_values(self):
        for number, numeral in [(1, "I"), (4, "IV"), (9, "IX"), (14, "XIV"), (40, "XL"),
                                (90, "XC"), (400, "CD"), (1987, "MCMLXXXVII"), (3999, "MMMCMXCIX")]:
            with self.subTest(number=number):
                self.assertEqual(to_roman(number), numeral)
                self.assertEqual(from_roman(numeral), number)

    def test_round_trip(self):
        for number in range(1, 4000):
            self.assertEqual(from_roman(to_roman(number)), number)

    def test_lower_case_is_accepted(self):
        self.assertEqual(from_roman(" mmxxiv "), 2024)

    def test_out_of_range(self):
        for bad in (0, -1, 4000):
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                to_roman(bad)
        with self.assertRaises(TypeError):
            to_roman(2.5)

    def test_not_canonical(self):
        for bad in ("", "IIII", "IC", "ABC", "VX"):
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                from_roman(bad)


if __name__ == "__main__":
    unittest.main()
