"""The inline reading syntax of plain text, ``{行|hang2}``: its patterns only (``re``, nothing
else, so the sentence chunker can use them without loading the frontend).

    INLINE.finditer(text)        # groups: hanzi in group(1), space-separated syllables in group(2)
    INLINE_PREFIX.search(text)   # a '{' at the end of text that may still become a group

The frontend (``streamtts.text.markup.parse_inline``) also checks that the syllables are ones
the model can say and that there is one per hanzi; the chunker keeps any match of ``INLINE``
whole, valid or not.
"""

from __future__ import annotations

import re

MAX_GROUP_HANZI = 16  # longest group: bounds what the chunker waits for
MAX_GROUP_CHARS = MAX_GROUP_HANZI * 8 + 3  # 16 hanzi, 16 syllables of at most 7 chars with spaces, braces
HANZI = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_SYLLABLE = r"[a-zü]{1,6}[1-5]"
INLINE = re.compile(r"\{([%s]{1,%d})\|(%s(?: %s)*)\}" % (HANZI, MAX_GROUP_HANZI, _SYLLABLE, _SYLLABLE))
INLINE_PREFIX = re.compile(r"\{[%s]{0,%d}(?:\|(?:[a-zü1-5]+ ?){0,%d})?\Z" % (HANZI, MAX_GROUP_HANZI,
                                                                           MAX_GROUP_HANZI))
