"""One gettext-style function for text that field staff and C4 operators read.

Spanish is the source language: every msgid is the Spanish text. English (and any
later language) lives in a real gettext catalogue, ``auxilio/locale/<lang>/
LC_MESSAGES/auxilio.po``, extracted with Babel and compiled to the ``.mo`` the
package ships (``make catalogue``; tests/i18n checks nothing is missing).
Select with ``AUXILIO_LANG`` (``es`` default, ``en``), or ``LANG``;
``AUXILIO_LOCALEDIR`` points at another catalogue tree (a translator's).
"""

from __future__ import annotations

import gettext
import os
from functools import lru_cache
from pathlib import Path

DOMAIN = "auxilio"
LOCALE_DIR = Path(__file__).with_name("locale")
SOURCE_LANGUAGE = "es"


def language() -> str:
    lang = os.environ.get("AUXILIO_LANG") or os.environ.get("LANG", SOURCE_LANGUAGE)
    return "en" if lang.lower().startswith("en") else SOURCE_LANGUAGE


@lru_cache(maxsize=8)
def translator(
    lang: str, localedir: str | None = None, domain: str = DOMAIN
) -> gettext.NullTranslations:
    """The catalogue for `lang` (a NullTranslations, i.e. the msgids, when there is none)."""
    return gettext.translation(
        domain, localedir or str(LOCALE_DIR), languages=[lang], fallback=True
    )


def localise_argparse() -> None:
    """argparse's own words (usage, headings, its errors) in the operator's language.

    argparse looks up its module-level ``_``/``ngettext`` when it formats, so
    this holds for every parser built or printed after the call.
    """
    import argparse

    tr: gettext.NullTranslations = (
        translator(SOURCE_LANGUAGE, None, "argparse")
        if language() == SOURCE_LANGUAGE
        else gettext.NullTranslations()
    )
    argparse._ = tr.gettext  # type: ignore[attr-defined]
    argparse.ngettext = tr.ngettext  # type: ignore[attr-defined]


def _catalogue() -> gettext.NullTranslations | None:
    lang = language()
    if lang == SOURCE_LANGUAGE:
        return None
    return translator(lang, os.environ.get("AUXILIO_LOCALEDIR"))


def _(msgid: str) -> str:
    """Translate a Spanish source string to the operator's language."""
    tr = _catalogue()
    return msgid if tr is None else tr.gettext(msgid)


def N_(msgid: str) -> str:  # noqa: N802 - the gettext convention for "mark, translate later"
    """Mark a Spanish string for the catalogue where it is defined; `_` translates it where shown."""
    return msgid


def both(msgid: str) -> str:
    """Spanish first, then English, for labels that must carry both."""
    en = translator("en", os.environ.get("AUXILIO_LOCALEDIR")).gettext(msgid)
    return msgid if en == msgid else f"{msgid} / {en}"
