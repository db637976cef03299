"""One gettext-style function for text that field staff and C4 operators read.

Spanish is the source language; English comes from the built-in catalogue or a
gettext catalogue dropped in ``AUXILIO_LOCALEDIR``. Select with ``AUXILIO_LANG``
(``es`` default, ``en``), or ``LANG``.
"""

from __future__ import annotations

import gettext
import os
from functools import lru_cache

# Built-in English catalogue: msgid (Spanish) -> English. A .mo file, when
# present, takes precedence, so translators never need to touch code.
_EN: dict[str, str] = {}


def register(catalogue: dict[str, str]) -> None:
    """Add Spanish -> English pairs from a module that owns the strings."""
    _EN.update(catalogue)
    _translator.cache_clear()


def language() -> str:
    lang = os.environ.get("AUXILIO_LANG") or os.environ.get("LANG", "es")
    return "en" if lang.lower().startswith("en") else "es"


@lru_cache(maxsize=4)
def _translator(lang: str) -> gettext.NullTranslations | None:
    localedir = os.environ.get("AUXILIO_LOCALEDIR")
    if localedir:
        try:
            return gettext.translation("auxilio", localedir, languages=[lang])
        except OSError:
            return None
    return None


def _(msgid: str) -> str:
    """Translate a Spanish source string to the operator's language."""
    lang = language()
    if lang == "es":
        return msgid
    tr = _translator(lang)
    if tr is not None:
        out = tr.gettext(msgid)
        if out != msgid:
            return out
    return _EN.get(msgid, msgid)


def both(msgid: str) -> str:
    """Spanish first, then English, for labels that must carry both."""
    en = _EN.get(msgid, msgid)
    return msgid if en == msgid else f"{msgid} / {en}"
