"""How to read a digit string aloud in Mandarin.

Call::

    read_integer("12345")            # -> "一万二千三百四十五"
    read_integer("2000")             # -> "两千"   (leading 2 before 千/万/亿 is spoken 两)
    read_integer("2", liang=True)    # -> "两"     (caller knows a measure word follows)
    read_decimal("3.14")             # -> "三点一四"
    read_number("-0.5")              # -> "负零点五"
    read_digits("2024")              # -> "二零二四"
    read_digits("110", phone=True)   # -> "幺幺零"

All functions take ASCII digit strings (validated by the caller's regex) and return hanzi.
"""

from __future__ import annotations

import cn2an

_DIGITS = "零一二三四五六七八九"
# Longer integers are identifiers more often than amounts, and cn2an cannot read > 16 digits.
MAX_CARDINAL_DIGITS = 12


def read_digits(digits: str, phone: bool = False) -> str:
    """Digit by digit. ``phone`` reads 1 as 幺, as Mandarin speakers do for phone numbers."""
    out = "".join(_DIGITS[ord(d) - 48] for d in digits if "0" <= d <= "9")
    return out.replace("一", "幺") if phone else out


def read_integer(digits: str, liang: bool = False) -> str:
    """An integer amount. Leading zeros or more than MAX_CARDINAL_DIGITS digits fall back to
    digit-by-digit reading (codes, IDs). ``liang``: the number counts something (a measure word
    follows), so a bare 2 is 两."""
    digits = digits.lstrip("+")
    if len(digits) > 1 and digits.startswith("0"):
        return read_digits(digits)
    if len(digits) > MAX_CARDINAL_DIGITS:
        return read_digits(digits)
    out = cn2an.an2cn(digits)
    if liang and out == "二":
        return "两"
    # 2000 / 20000 / 2亿 are spoken 两千 / 两万 / 两亿; 二百 and 二十 stay.
    if len(out) >= 2 and out[0] == "二" and out[1] in "千万亿":
        out = "两" + out[1:]
    return out


def read_decimal(number: str, strip_zeros: bool = False) -> str:
    """``"3.14"`` -> 三点一四. ``strip_zeros`` drops trailing zeros first (money: 12.50 -> 十二点五)."""
    whole, _, frac = number.partition(".")
    if strip_zeros:
        frac = frac.rstrip("0")
    # Leading zeros dropped first: "00.5" is read 零点五, not as a digit string. (Not int(): past
    # 4300 digits Python refuses to parse it.)
    whole_read = read_integer(whole.lstrip("0") or "0") if whole else "零"
    if not frac:
        return whole_read
    return whole_read + "点" + read_digits(frac)


def read_number(number: str, liang: bool = False) -> str:
    """Signed integer or decimal: ``"-3"`` -> 负三, ``"2.5"`` -> 二点五."""
    sign = ""
    if number[:1] in "-−":
        sign, number = "负", number[1:]
    elif number[:1] == "+":
        number = number[1:]
    if "." in number:
        return sign + read_decimal(number)
    return sign + read_integer(number, liang=liang and not sign)
