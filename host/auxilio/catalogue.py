"""The translation catalogue: extract with Babel, update the .po files, compile the shipped .mo.

`make catalogue` (``python -m auxilio.catalogue``) after adding or changing
operator-facing text. Spanish is the source language, so the msgids are the
Spanish strings found in ``_()``, ``N_()`` and ``both()`` calls under
host/auxilio; each language's ``.po`` gets new msgids (empty, for a translator)
and loses the ones the code no longer has. tests/i18n fails while a string
lacks its English or the shipped ``.mo`` is older than its ``.po``.
Needs Babel (the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from auxilio.i18n import DOMAIN, LOCALE_DIR

PACKAGE_DIR = Path(__file__).parent
KEYWORDS = {"_": None, "N_": None, "both": None}
LANGUAGES = ("en",)
# Catalogues written by hand and only compiled here: argparse's own words in
# Spanish (its msgids are English), so a Spanish --help is Spanish throughout.
STATIC = (("es", "argparse"),)
PO_WIDTH = 100


def po_path(lang: str, domain: str = DOMAIN) -> Path:
    return LOCALE_DIR / lang / "LC_MESSAGES" / f"{domain}.po"


def extract() -> dict[str, list[str]]:
    """Spanish msgid -> the places that use it (file:line), from the package sources."""
    from babel.messages.extract import extract_from_dir

    found: dict[str, list[str]] = {}
    for filename, lineno, msgid, _comments, _ctx in extract_from_dir(
        str(PACKAGE_DIR), method_map=[("**.py", "python")], keywords=KEYWORDS
    ):
        if isinstance(msgid, str) and msgid:
            found.setdefault(msgid, []).append(f"{filename}:{lineno}")
    return found


def read(lang: str, domain: str = DOMAIN):  # -> babel.messages.catalog.Catalog
    from babel.messages import pofile

    with po_path(lang, domain).open("rb") as f:
        return pofile.read_po(f, locale=lang, domain=domain)


def compiled(catalog) -> bytes:  # noqa: ANN001 - a Babel Catalog
    from babel.messages import mofile

    buf = io.BytesIO()
    mofile.write_mo(buf, catalog)
    return buf.getvalue()


def update(lang: str, found: dict[str, list[str]]) -> tuple[int, int]:
    """Bring `lang`'s .po to the extracted msgids, compile its .mo; (added, dropped)."""
    from babel.messages import pofile
    from babel.messages.catalog import Catalog

    old = read(lang) if po_path(lang).exists() else Catalog(locale=lang, domain=DOMAIN)
    # The old header's dates, so a run that changes no string changes no byte.
    new = Catalog(
        locale=lang,
        domain=DOMAIN,
        project="Auxilio",
        copyright_holder="Auxilio developers",
        creation_date=old.creation_date,
        revision_date=old.revision_date,
    )
    added = 0
    for msgid in sorted(found):
        prev = old.get(msgid)
        added += prev is None or not prev.string
        new.add(msgid, prev.string if prev is not None else "", locations=[])
    dropped = sum(1 for m in old if m.id and m.id not in found)
    path = po_path(lang)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pofile.write_po(f, new, width=PO_WIDTH, omit_header=False, include_lineno=False)
    path.with_suffix(".mo").write_bytes(compiled(read(lang)))
    return added, dropped


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m auxilio.catalogue", description=__doc__).parse_args(
        argv
    )
    found = extract()
    for lang in LANGUAGES:
        added, dropped = update(lang, found)
        untranslated = [m.id for m in read(lang) if m.id and not m.string]
        print(
            f"{lang}: {len(found)} msgids, {added} new or untranslated, {dropped} dropped; "
            f"{len(untranslated)} to translate in {po_path(lang)}"
        )
    for lang, domain in STATIC:
        po_path(lang, domain).with_suffix(".mo").write_bytes(compiled(read(lang, domain)))
        print(f"{lang}: {domain} compiled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
