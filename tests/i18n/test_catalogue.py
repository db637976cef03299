"""The translation catalogue is complete, shipped compiled, and the one place English lives (issue 9 §4)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from auxilio import catalogue, i18n

HOST = Path(catalogue.__file__).parent


def test_every_operator_string_has_its_english() -> None:
    found = catalogue.extract()
    assert len(found) > 150  # the console, devices, reports, demo, walkthrough, factory test
    en = {m.id: m.string for m in catalogue.read("en") if m.id}
    missing = {msgid: where[0] for msgid, where in found.items() if not en.get(msgid)}
    assert not missing, f"run `make catalogue` and translate: {missing}"
    stale = sorted(set(en) - set(found))
    assert not stale, f"the .po keeps strings the code no longer has; `make catalogue`: {stale}"


def _key(v: object) -> object:
    """A message id or string, plural forms (lists) made hashable."""
    return tuple(v) if isinstance(v, (list, tuple)) else v


def test_the_shipped_mo_is_the_compiled_po() -> None:
    """Every translation in each .po is in its shipped .mo, and nothing else (headers aside)."""
    from babel.messages import mofile

    domains = [(lang, i18n.DOMAIN) for lang in catalogue.LANGUAGES] + list(catalogue.STATIC)
    for lang, domain in domains:
        mo = catalogue.po_path(lang, domain).with_suffix(".mo")
        with mo.open("rb") as f:
            shipped = {_key(m.id): _key(m.string) for m in mofile.read_mo(f) if m.id}
        source = {
            _key(m.id): _key(m.string) for m in catalogue.read(lang, domain) if m.id and m.string
        }
        assert shipped == source, f"{mo} is older than its .po: run `make catalogue`"


@pytest.mark.parametrize(
    ("lang", "heading", "option_help"),
    [
        ("es", "opciones:", "segundos de espera por la pasarela"),
        ("en", "options:", "seconds to wait for the gateway"),
    ],
)
def test_operator_help_is_spanish_first_throughout(
    lang: str, heading: str, option_help: str
) -> None:
    from auxilio.testing.tools import run_auxilio

    r = run_auxilio(["attend", "--help"], env={**os.environ, "AUXILIO_LANG": lang})
    assert r.returncode == 0
    assert heading in r.stdout and option_help in " ".join(r.stdout.split())
    bad = run_auxilio(["devices", "rekey", "0938-NKRT"], env={**os.environ, "AUXILIO_LANG": lang})
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert ("faltan estos argumentos" in bad.stderr) == (lang == "es")


def test_no_catalogue_hides_in_the_code() -> None:
    """English lives in the .po only: no dict of translations registered from a module."""
    offenders = [
        str(p.relative_to(HOST))
        for p in HOST.rglob("*.py")
        if re.search(r"^from auxilio\.i18n import .*\bregister\b", p.read_text(), re.M)
    ]
    assert not offenders


@pytest.mark.parametrize(
    ("lang", "expected"), [("en", "spare"), ("es", "repuesto"), ("en_GB.UTF-8", "spare")]
)
def test_the_language_comes_from_the_environment(
    lang: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUXILIO_LANG", lang)
    assert i18n._("repuesto") == expected
    assert i18n.both("repuesto") == "repuesto / spare"


def test_an_installed_console_reads_english_from_the_package(tmp_path: Path) -> None:
    """What `devices show` prints under AUXILIO_LANG=en comes from the shipped .mo."""
    code = (
        "import os; os.environ['AUXILIO_LANG'] = 'en';"
        "from auxilio.words import word; print(word('spare'), word('bracelet'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout
    assert out.split() == ["spare", "bracelet"]


@pytest.mark.parametrize(
    ("lang", "words"),
    [("es", ["alta", "asignación", "asignado"]), ("en", ["enrolled", "assignment", "assigned"])],
)
def test_devices_show_names_audit_actions_in_words(
    lang: str, words: list[str], tmp_path: Path
) -> None:
    from auxilio.testing.tools import run_auxilio

    env = {**os.environ, "AUXILIO_LANG": lang, "AUXILIO_REGISTRY": str(tmp_path / "r.db")}
    env["AUXILIO_KEYS_DIR"] = str(tmp_path / "keys")
    env["COLUMNS"] = "200"
    for args in (
        ["keys", "init", "--dir", str(tmp_path / "keys")],
        ["devices", "add", "--id", "0938-NKRT", "--kind", "bracelet", "--board", "bracelet-c3"],
        ["devices", "assign", "0938-NKRT", "--case", "PR-2026-00123"],
    ):
        r = run_auxilio(args, env=env)
        assert r.returncode == 0, r.stderr
    shown = run_auxilio(["devices", "show", "0938-NKRT"], env=env)
    assert shown.returncode == 0, shown.stderr
    for w in words:
        assert w in shown.stdout, shown.stdout
    # The log keeps the codes: only the screen speaks the operator's language.
    from auxilio.registry import open_registry

    reg = open_registry(str(tmp_path / "r.db"))
    try:
        assert [e["action"] for e in reg.audit_log(target="0938-NKRT")] == ["assign", "add"]
    finally:
        reg.close()
