"""Non-standard words: digits and symbols rewritten as the hanzi a reader would say.

Call ``expand(text)`` on width-normalized, simplified text; every ASCII digit in the result has
been replaced by hanzi::

    expand("2024年3月5日14:30")   # -> "二零二四年三月五日十四点三十分"
    expand("气温-5℃")             # -> "气温零下五摄氏度"
    expand("中国队3:2获胜")        # -> "中国队三比二获胜"

Rules run in a fixed order, most specific first (phone numbers before dates before times before
ranges before plain numbers), because each rule consumes the digits it reads. Every pattern
that starts with a number is anchored with a no-digit lookbehind, so long digit runs cost
linear time.

Time or score? ``a:b`` is a time when b has exactly two digits, a <= 24 and b <= 59, unless the
text near it talks about a match (比分, 比赛, 队, 击败 ...) and not about a clock (上午, 时间,
开始 ...). Anything else (3:2, 1:1000) is read with 比.
"""

from __future__ import annotations

import functools
import re

from .numbers import read_decimal, read_digits, read_integer, read_number

# \d means ASCII digits only: other scripts' digits are not numbers we can read.
_re = functools.partial(re.compile, flags=re.ASCII)
_NUM = r"\d+(?:\.\d+)?"
_WINDOW = 12  # characters either side searched for context words

# Words that make a clock-shaped "a:b" (or "a-b") a score. Kept to unambiguous match words:
# 局/球/胜 alone occur in 公安局, 地球, 胜利 next to ordinary times.
_SPORTS = _re(r"比分|比赛|赛季|击败|战胜|打败|负于|输给|战平|逆转|领先|落后|决赛|联赛|半场|全场|"
              r"进球|获胜|取胜|告负|不敌|胜出|力克|险胜|完胜|惨败|对阵|交锋|队")
_CLOCK = _re(r"上午|下午|晚上|凌晨|早上|早晨|中午|傍晚|时间|开始|结束|截止|开赛|开幕|起飞|到达|出发")
# Numbers right after these words are read digit by digit; only "是/为/:" may sit between.
_GAP = r"((?:号码|号)?(?:是|为)?[:：]?\s?)"
_PHONE_CUE = _re(r"(电话|手机|热线|拨打|致电|呼叫|联系方式|客服|传真|来电)" + _GAP +
                 r"(\+?\d[\d\- ]{1,18}\d)")
_CODE_CUE = _re(r"(编号|验证码|尾号|卡号|账号|帐号|工号|学号|邮编|邮政编码|房间号|房间|车次|航班|密码|代码|"
                r"订单号|单号|型号|序列号|身份证号|身份证)" + _GAP + r"(\d+)")

_CURRENCY = {"¥": "元", "￥": "元", "$": "美元", "US$": "美元", "HK$": "港元", "€": "欧元",
             "£": "英镑"}
_MONEY_WORDS = "元|块|美元|欧元|英镑|港元|港币|日元|韩元|人民币"

# Units that follow a number, longest first inside the alternation. Storage units (GB, MB ...)
# are left as letters: Mandarin speakers spell them out.
_UNITS = {
    "km/h": "公里每小时", "m/s": "米每秒", "km²": "平方公里", "km2": "平方公里", "m²": "平方米",
    "m2": "平方米", "cm²": "平方厘米", "cm2": "平方厘米", "m³": "立方米", "m3": "立方米",
    "kWh": "千瓦时", "mAh": "毫安时", "kcal": "千卡", "kHz": "千赫兹", "MHz": "兆赫兹",
    "GHz": "吉赫兹", "min": "分钟", "km": "公里", "cm": "厘米", "mm": "毫米", "nm": "纳米",
    "μm": "微米", "kg": "千克", "mg": "毫克", "ml": "毫升", "mL": "毫升", "kW": "千瓦",
    "Hz": "赫兹", "dB": "分贝", "ms": "毫秒", "m": "米", "g": "克", "t": "吨", "L": "升",
    "W": "瓦", "V": "伏", "h": "小时", "s": "秒", "㎡": "平方米", "㎏": "千克", "㎞": "公里",
    "㎝": "厘米", "㎜": "毫米", "㎖": "毫升",
}
_UNIT_RE = _re(
    r"(\d)\s?(" + "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True)) +
    r")(?![A-Za-z0-9])")

# A bare 2 that counts something is 两 (两个, 两点, 两公里) but 二 in 二月, 二号, 第二, 二楼.
_MEASURE = _re(
    r"(?:个|位|只|条|张|本|次|件|天|年(?!级)|种|名|台|辆|块|元|角|分钟|小时|周|星期|斤|公斤|"
    r"千克|克|吨|米|公里|厘米|毫米|升|毫升|万|亿|千|百|岁|人|家|所|场|碗|杯|瓶|双|对|套|份|篇|"
    r"首|句|层|间|座|架|艘|门|项|点(?!\d)|倍|遍|口|头|把|支|根|片|颗|粒|盒|包|箱|趟|回|步|声|"
    r"美元|欧元|英镑|港元|秒|分(?!之))")

_FRACTIONS = {"½": "二分之一", "⅓": "三分之一", "⅔": "三分之二", "¼": "四分之一",
              "¾": "四分之三", "⅕": "五分之一", "⅛": "八分之一"}


def _context(text: str, start: int, end: int) -> str:
    return text[max(0, start - _WINDOW):end + _WINDOW]


def _phone(m: re.Match) -> str:
    return read_digits(m.group(0), phone=True)


def _phone_cue(m: re.Match) -> str:
    cue, gap, number = m.groups()
    # "拨打110" is a number to dial; "电话费100元" is not: without a dialing verb, only
    # five or more digits count as a phone number.
    if cue not in ("拨打", "致电", "呼叫") and sum(c.isdigit() for c in number) < 5:
        return m.group(0)
    return cue + gap + read_digits(number, phone=True)


def _date_ymd(m: re.Match) -> str:
    y, mo, d = m.group(1), int(m.group(2)), int(m.group(3))
    if not (1 <= mo <= 12 and 1 <= d <= 31):
        return m.group(0)
    return f"{read_digits(y)}年{read_integer(str(mo))}月{read_integer(str(d))}日"


def _date_ym(m: re.Match) -> str:
    y, mo = m.group(1), int(m.group(2))
    if not (1000 <= int(y) <= 2999 and 1 <= mo <= 12):
        return m.group(0)
    return f"{read_digits(y)}年{read_integer(str(mo))}月"


def _year(m: re.Match) -> str:
    # "1000年前" is a duration, "1998年" a year.
    y, after = m.group(1), m.group(2) or ""
    if y.endswith("00") and after:
        return read_integer(y) + "年" + after
    return read_digits(y) + "年" + after


def _colon(m: re.Match) -> str:
    text, a, b, sec = m.string, m.group(1), m.group(2), m.group(3)
    ctx = _context(text, m.start(), m.end())
    is_clock_shape = len(b) == 2 and int(a) <= 24 and int(b) <= 59 and len(a) <= 2
    if is_clock_shape and (_CLOCK.search(ctx) or not _SPORTS.search(ctx)):
        out = read_integer(str(int(a)), liang=True) + "点"
        if int(b):
            out += ("零" if b[0] == "0" else "") + read_integer(str(int(b))) + "分"
        if sec is not None and int(sec):
            out += ("零" if sec[0] == "0" else "") + read_integer(str(int(sec))) + "秒"
        return out
    if sec is not None:  # a:b:c that is not a clock: a ratio of three
        return "比".join(read_integer(x) for x in (a, b, sec))
    return read_integer(a) + "比" + read_integer(b)


def _money_symbol(m: re.Match) -> str:
    sym, num, big = m.group(1), m.group(2), m.group(3) or ""
    word = _CURRENCY[sym]
    amount = read_decimal(num, strip_zeros=True) if "." in num else read_integer(num, liang=True)
    return amount + big + word


def _temperature(m: re.Match) -> str:
    s1, n1, s2, n2, unit = m.groups()
    if unit == "度" and not (s1 or s2):
        return m.group(0)  # "30度" may be an angle or a temperature; the generic rule reads it

    def one(sign: str | None, n: str) -> str:
        return ("零下" if sign else "") + read_number(n)

    if s1 and s1 != "零下" and m.string.endswith("零下", 0, m.start()):
        s1 = None  # "零下-5℃": the sign is already spoken

    out = one(s1, n1) + (("到" + one(s2, n2)) if n2 else "")
    return out + {"℃": "摄氏度", "°C": "摄氏度", "°F": "华氏度", "℉": "华氏度"}.get(unit, "度")


def _percent(m: re.Match) -> str:
    sign, n, unit = m.group(1), m.group(2), m.group(3)
    return ("负" if sign else "") + ("千分之" if unit == "‰" else "百分之") + read_number(n)


def _percent_range(m: re.Match) -> str:
    return "百分之" + read_number(m.group(1)) + "到百分之" + read_number(m.group(3))


def _arith(m: re.Match) -> str:
    a, op, b, c = m.groups()
    word = {"+": "加", "-": "减", "−": "减", "×": "乘", "x": "乘", "X": "乘", "*": "乘",
            "÷": "除以", "/": "除以"}[op]
    return read_number(a) + word + read_number(b) + "等于" + read_number(c)


def _range(m: re.Match) -> str:
    ctx = _context(m.string, m.start(), m.end())
    word = "比" if _SPORTS.search(ctx) and "." not in m.group(0) else "到"
    return m.group(1) + word


def _dotted(m: re.Match) -> str:
    return "点".join(read_integer(p) if len(p) < 2 or p[0] != "0" else read_digits(p)
                    for p in m.group(0).split("."))


def _signed(m: re.Match, prefix_ok: bool) -> tuple[str, str]:
    """(sign word, number) — a leading minus counts only after a non-letter, non-digit."""
    sign, num = m.group(1), m.group(2)
    if sign and not prefix_ok:
        return sign, num
    return ("负" if sign else ""), num


def _decimal(m: re.Match) -> str:
    prev = m.string[m.start() - 1] if m.start() else ""
    sign, num = _signed(m, not (prev.isalnum() and prev.isascii()))
    return sign + read_decimal(num)


def _integer(m: re.Match) -> str:
    text, start = m.string, m.start()
    prev = text[start - 1] if start else ""
    sign, num = _signed(m, not (prev.isalnum() and prev.isascii()))
    first = m.start(2)
    before = text[first - 1] if first else ""
    liang = (not sign and before != "第" and _MEASURE.match(text, m.end()) is not None)
    if prev.isascii() and prev.isalpha() and len(num) >= 3:  # CA1234, G123: codes
        return sign + read_digits(num)
    return sign + read_integer(num, liang=liang)


_RULES: list[tuple[re.Pattern, object]] = [
    # 1,234,567 -> 1234567
    (_re(r"(?<![\d.])\d{1,3}(?:,\d{3})+(?![\d])"), lambda m: m.group(0).replace(",", "")),
    # phone numbers: mobile, 400/800 service, landline with area code
    (_re(r"(?<![\d])(?:\+?86[- ]?)?1[3-9]\d[- ]?\d{4}[- ]?\d{4}(?![\d])"), _phone),
    (_re(r"(?<![\d])[48]00-?\d{3}-?\d{4}(?![\d])"), _phone),
    (_re(r"(?<![\d-])0\d{2,3}-\d{7,8}(?![\d-])"), _phone),
    (_PHONE_CUE, _phone_cue),
    (_CODE_CUE, lambda m: m.group(1) + m.group(2) + read_digits(m.group(3))),
    # dates
    (_re(r"(?<![\d.])(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?![\d.])"), _date_ymd),
    (_re(r"(?<![\d.])(\d{4})[-/](\d{1,2})(?![\d./-])"), _date_ym),
    (_re(r"(?<![\d.])((?:1[5-9]|20)\d\d)\s*[-~～—–到至]\s*((?:1[5-9]|20)\d\d)(?=年|赛季|学年|财年)"),
     lambda m: read_digits(m.group(1)) + "到" + read_digits(m.group(2))),
    (_re(r"(?<![\d.])(\d{4})年(前|后|以前|以后|之前|之后|间|来|多|左右|里|内)?"), _year),
    (_re(r"(?<!\d)0(\d)(?=[月日号时点分秒])"), lambda m: m.group(1)),
    # clock times and scores
    (_re(r"(?<![\d.:])(\d{1,4})\s?:\s?(\d{1,6})(?::(\d{2}))?(?![\d:])"), _colon),
    # money with a currency sign
    (_re(r"(US\$|HK\$|[¥￥$€£])\s?(" + _NUM + r")(万|亿|千|百)?(?:元)?"), _money_symbol),
    (_re(r"(?<![\d.])(\d+\.\d+)(?=(?:万|亿)?(?:" + _MONEY_WORDS + r"))"),
     lambda m: read_decimal(m.group(1), strip_zeros=True)),
    # temperatures (a minus here is 零下)
    (_re(r"(?<![\d.])([-−]|零下)?(" + _NUM + r")(?:\s*[~～\-—–到至]\s*([-−]|零下)?(" + _NUM +
         r"))?\s*(℃|°C|°F|℉|度)"), _temperature),
    (_re(r"(\d)\s?°(?![CF])"), lambda m: m.group(1) + "度"),
    # percentages
    (_re(r"(?<![\d.])(" + _NUM + r")(%?)\s*[~～\-—–到至]\s*(" + _NUM + r")%"), _percent_range),
    (_re(r"(?<![\d.])([-−])?(" + _NUM + r")\s*(%|‰)"), _percent),
    # arithmetic with "=", then fractions
    (_re(r"(?<![\d.])(" + _NUM + r")\s*([+\-−×xX*÷/])\s*(" + _NUM + r")\s*=\s*(-?" + _NUM + r")"),
     _arith),
    (_re(r"(?<![\d/.])(\d+)/(\d+)(?![\d/])"),
     lambda m: read_integer(m.group(2)) + "分之" + read_integer(m.group(1))),
    (_re("[" + "".join(_FRACTIONS) + "]"), lambda m: _FRACTIONS[m.group(0)]),
    (_re(r"(\d)\s*\+\s*(?=\d)"), lambda m: m.group(1) + "加"),
    (_re(r"(\d)\s*[×xX*]\s*(?=\d)"), lambda m: m.group(1) + "乘"),
    # ranges 3-5 / 3~5 (sports context: 3-2 is a score)
    (_re(r"(?<![\d.])(" + _NUM + r")\s*[~～\-—–]\s*(?=\d)"), _range),
    # units after a number
    (_UNIT_RE, lambda m: m.group(1) + _UNITS[m.group(2)]),
    # 1.2.3 / 192.168.1.1
    (_re(r"(?<![\d.])\d+(?:\.\d+){2,}(?![\d])"), _dotted),
    # plain numbers
    (_re(r"([-−])?(?<![\d.])(\d+\.\d+)(?!\d)"), _decimal),
    (_re(r"([-−])?(?<!\d)(\d+)(?!\d)"), _integer),
]


def expand(text: str) -> str:
    """Rewrite every number/symbol group in ``text`` as hanzi (see module docstring)."""
    if not any(c.isdigit() or c in _FRACTIONS for c in text):
        return text  # fast path: most sentences have no digits
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    return text
