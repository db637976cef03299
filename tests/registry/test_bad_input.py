"""Bad input to `auxilio devices` (issue 9 §2): one `error:` line, a non-zero exit, and nothing changed.

Each case reads the state back: the registry rows, the files on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from auxilio.protocol import codec
from auxilio.registry import open_registry
from auxilio.testing.cli import CliRun, run_cli, run_cli_process
from auxilio.testing.fs import read_only

BRACELET = "0938-NKRT"


class Env:
    """A technician's shell: keys made, a registry path, commands run in process."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.registry = tmp / "var" / "auxilio.db"
        self.env = {
            "AUXILIO_REGISTRY": str(self.registry),
            "AUXILIO_KEYS_DIR": str(tmp / "keys"),
            "AUXILIO_LANG": "es",
            "AUXILIO_ACTOR": "tech",
        }

    def __call__(self, *args: str, stdin: str | None = None) -> CliRun:
        return run_cli(*args, env=self.env, stdin=stdin, cwd=self.tmp)

    def devices(self) -> dict[str, tuple[str, str, str]]:
        """label -> (kind, board, state) read from the registry itself."""
        with open_registry(self.registry, readonly=True) as reg:
            return {r.label: (r.kind, r.board, r.state) for r in reg.list_devices()}

    def case(self, device: str) -> str | None:
        with open_registry(self.registry, readonly=True) as reg:
            a = reg.current_assignment(device)
        return a["case_ref"] if a else None

    def audit_count(self) -> int:
        with open_registry(self.registry, readonly=True) as reg:
            return len(reg.audit_log(limit=10_000))


@pytest.fixture
def sh(tmp_path: Path) -> Env:
    e = Env(tmp_path)
    e("keys", "init").ok()
    return e


@pytest.fixture
def enrolled(sh: Env) -> Env:
    sh("devices", "add", "--id", BRACELET, "--kind", "bracelet", "--board", "bracelet-c3").ok()
    sh("devices", "assign", BRACELET, "--case", "PR-2026-00123").ok()
    return sh


# ------------------------------------------------------------------ tracebacks ---


def test_write_to_a_read_only_registry(enrolled: Env) -> None:
    before = enrolled.audit_count()
    with read_only(enrolled.registry):
        r = enrolled("devices", "assign", BRACELET, "--case", "PR-2026-00999", "--reassign")
        line = r.error_line()
        assert r.rc == 4 and "readonly" in line and "nothing was changed" in line
        # Reading still works: only writes are refused.
        assert enrolled("devices", "show", BRACELET, "--json").ok().out
    assert enrolled.case(BRACELET) == "PR-2026-00123"
    assert enrolled.audit_count() == before


def test_a_bug_is_not_hidden_as_a_database_error() -> None:
    from auxilio.cli import database_error
    from sqlalchemy.exc import IntegrityError, OperationalError

    assert database_error(OperationalError("UPDATE x", {}, Exception("database is locked")))
    assert database_error(IntegrityError("INSERT x", {}, Exception("UNIQUE failed"))) is None
    assert database_error(ValueError("boom")) is None


def test_secret_out_into_a_read_only_directory_enrols_nothing(sh: Env) -> None:
    out_dir = sh.tmp / "prov"
    out_dir.mkdir()
    with read_only(out_dir):
        r = sh(
            "devices", "add", "--kind", "bracelet", "--board", "bracelet-c3",
            "--secret-out", str(out_dir / "b.json"),
        )  # fmt: skip
        line = r.error_line()
    assert r.rc == 2 and "not writable" in line
    assert list(out_dir.iterdir()) == []
    assert not sh.registry.exists()  # not even an empty registry was left behind


def test_failed_enrolment_leaves_no_provisioning_file(enrolled: Env) -> None:
    out = enrolled.tmp / "dup.json"
    r = enrolled(
        "devices", "add", "--id", BRACELET, "--kind", "bracelet", "--board", "bracelet-c3",
        "--secret-out", str(out),
    )  # fmt: skip
    assert "already registered" in r.error_line()
    assert not out.exists()  # the reserved file went with the refused enrolment
    assert list(enrolled.devices()) == [BRACELET]


def test_secret_out_is_reserved_before_the_registry_changes(sh: Env) -> None:
    out = sh.tmp / "b.json"
    sh("devices", "add", "--kind", "bracelet", "--board", "bracelet-c3", "--secret-out", str(out))
    prov = json.loads(out.read_text())
    assert out.stat().st_mode & 0o777 == 0o600
    assert list(sh.devices()) == [prov["device"]] and len(prov["secret"]) == 64


# ------------------------------------------------------------- silently wrong ---


def test_unknown_board_is_refused(sh: Env) -> None:
    r = sh("devices", "add", "--kind", "bracelet", "--board", "bracelet-c4")
    line = r.error_line()
    assert r.rc == 3 and "bracelet-c4" in line and "bracelet-c3" in line
    assert not sh.registry.exists()


@pytest.mark.parametrize(("kind", "board"), [("bracelet", "button-s3"), ("button", "bracelet-c3")])
def test_board_that_cannot_be_that_kind_is_refused(sh: Env, kind: str, board: str) -> None:
    r = sh("devices", "add", "--kind", kind, "--board", board)
    line = r.error_line()
    assert r.rc == 2 and f"not a {kind}" in line
    assert not sh.registry.exists()


def test_a_board_with_both_roles_takes_either(sh: Env) -> None:
    sh("devices", "add", "--kind", "button", "--board", "devkit-esp32").ok()
    sh("devices", "add", "--kind", "bracelet", "--board", "devkit-esp32").ok()
    assert sorted(k for k, _b, _s in sh.devices().values()) == ["bracelet", "button"]


def test_assign_over_a_case_needs_reassign(enrolled: Env) -> None:
    before = enrolled.audit_count()
    r = enrolled("devices", "assign", BRACELET, "--case", "PR-2026-00999")
    line = r.error_line()
    assert r.rc == 1 and "PR-2026-00123" in line and "--reassign" in line
    assert enrolled.case(BRACELET) == "PR-2026-00123"
    assert enrolled.audit_count() == before
    enrolled("devices", "assign", BRACELET, "--case", "PR-2026-00999", "--reassign").ok()
    assert enrolled.case(BRACELET) == "PR-2026-00999"


def test_a_moved_button_needs_reassign_too(sh: Env) -> None:
    btn = json.loads(
        sh("devices", "add", "--kind", "button", "--board", "button-s3", "--json").ok().out
    )["device"]
    site = ["--lat", "19.43", "--lon", "-99.13", "--sector", "Centro"]
    sh("devices", "assign", btn, "--site", "Plaza", *site).ok()
    assert "--reassign" in sh("devices", "assign", btn, "--site", "Alameda", *site).error_line()
    sh("devices", "assign", btn, "--site", "Alameda", *site, "--reassign").ok()
    with open_registry(sh.registry, readonly=True) as reg:
        assert reg.current_assignment(btn)["site"] == "Alameda"


def test_full_width_case_reference_is_stored_in_its_ascii_form(sh: Env) -> None:
    sh("devices", "add", "--id", BRACELET, "--kind", "bracelet", "--board", "bracelet-c3").ok()
    sh("devices", "assign", BRACELET, "--case", "PR-2026-００１２３").ok()
    assert sh.case(BRACELET) == "PR-2026-00123"  # NFKC: one case, one spelling
    # Digits of another script are not a compatibility form: refused, not guessed.
    r = sh("devices", "assign", BRACELET, "--case", "PR-2026-٠٠١٢٣", "--reassign")
    assert r.rc == 2 and "PR-2026-00123" in r.error_line()
    assert sh.case(BRACELET) == "PR-2026-00123"


# ----------------------------------------------------- registry that is not there ---


@pytest.mark.parametrize(
    "args",
    [
        ("devices", "list"),
        ("devices", "show", BRACELET),
        ("devices", "export-csv"),
        ("devices", "assign", BRACELET, "--case", "PR-2026-00123"),
        ("devices", "revoke", BRACELET),
        ("broker", "config", "--out", "brokerdir"),
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_commands_that_need_a_registry_never_create_one(sh: Env, args: tuple[str, ...]) -> None:
    missing = sh.tmp / "no" / "such" / "x.db"
    r = sh(*args, "--registry", str(missing))
    line = r.error_line()
    assert r.rc == 3 and "does not exist" in line
    assert not (sh.tmp / "no").exists()
    r = sh(*args, "--registry", str(sh.tmp / "x.db"))  # the directory exists, the file not
    assert r.rc == 3 and not (sh.tmp / "x.db").exists()
    assert not (sh.tmp / "brokerdir").exists()


def test_enrolment_creates_the_registry_directory_but_not_a_missing_tree(sh: Env) -> None:
    typo = sh.tmp / "no" / "such" / "x.db"
    r = sh(
        "devices", "add", "--kind", "bracelet", "--board", "bracelet-c3", "--registry", str(typo)
    )
    line = r.error_line()
    assert r.rc == 2 and str(sh.tmp / "no") in line
    assert not (sh.tmp / "no").exists()
    # The default var/auxilio.db on first use: var/ is created.
    sh("devices", "add", "--kind", "bracelet", "--board", "bracelet-c3").ok()
    assert sh.registry.is_file() and len(sh.devices()) == 1


# ------------------------------------------------------------------ misleading ---


def test_spreadsheet_csv_with_bom_and_semicolons_is_imported(sh: Env) -> None:
    sh("devices", "add", "--id", BRACELET, "--kind", "bracelet", "--board", "bracelet-c3").ok()
    btn = json.loads(
        sh("devices", "add", "--kind", "button", "--board", "button-s3", "--json").ok().out
    )["device"]
    # What a Spanish-locale spreadsheet saves as "CSV UTF-8": BOM, `;`, decimal comma, CRLF.
    text = (
        "\ufeffDevice;Kind;case_ref;site;lat;lon;sector\r\n"
        f"{BRACELET};bracelet;PR-2026-00123;;;;\r\n"
        f"{btn};button;;Plaza de Armas;19,4326;-99,1332;Centro\r\n"
        ";;;;;;\r\n"
    )
    path = sh.tmp / "export.csv"
    path.write_bytes(text.encode())
    summary = json.loads(sh("devices", "import-csv", str(path), "--json").ok().out)
    assert summary["assigned"] == 2
    assert sh.case(BRACELET) == "PR-2026-00123"
    with open_registry(sh.registry, readonly=True) as reg:
        a = reg.current_assignment(btn)
    assert (a["site"], a["lat"], a["lon"]) == ("Plaza de Armas", 19.4326, -99.1332)


def test_every_bad_csv_line_is_reported_and_nothing_is_imported(sh: Env) -> None:
    sh("devices", "add", "--id", BRACELET, "--kind", "bracelet", "--board", "bracelet-c3").ok()
    before = sh.audit_count()
    text = (
        "device,kind,board,case_ref\n"
        f"{BRACELET},bracelet,,PR-2026-00123\n"  # good
        "0938-NKRX,bracelet,,PR-2026-00124\n"  # bad check character
        f"{BRACELET},bracelet,,PR-2026-00125\n"  # listed twice
        "0000-0001,bracelet,bracelet-c4,PR-2026-00126\n"  # unknown device (and board)
        "0000-0002,bracelet,,Maria Lopez\n"  # a name, not a case reference
    )
    r = sh("devices", "import-csv", "-", stdin=text)
    line = r.error_line()
    assert r.rc == 2 and "4 bad lines" in line
    for n in (3, 4, 5, 6):
        assert f"line {n}:" in r.err
    assert "line 2:" not in r.err
    assert sh.case(BRACELET) is None and sh.audit_count() == before  # atomic: nothing applied


def test_csv_row_replacing_a_case_needs_reassign(enrolled: Env) -> None:
    text = f"device,kind,case_ref\n{BRACELET},bracelet,PR-2026-00999\n"
    r = enrolled("devices", "import-csv", "-", stdin=text)
    assert "line 2:" in r.error_line() and "--reassign" in r.err
    assert enrolled.case(BRACELET) == "PR-2026-00123"
    enrolled("devices", "import-csv", "-", "--reassign", stdin=text).ok()
    assert enrolled.case(BRACELET) == "PR-2026-00999"


def test_csv_enrolment_checks_the_board_against_boards(sh: Env) -> None:
    secrets = sh.tmp / "secrets"
    secrets.mkdir()
    text = f"device,kind,board\n{codec.device_str(3)},bracelet,button-s3\n"
    r = sh("devices", "import-csv", "-", "--secret-dir", str(secrets), stdin=text)
    assert "line 2:" in r.error_line() and "not a bracelet" in r.err
    assert list(secrets.iterdir()) == [] and sh.devices() == {}


def test_exit_codes_hold_in_a_real_process(enrolled: Env) -> None:
    """The in-process runs above, checked once through the installed console script."""
    r = run_cli_process(
        "devices", "assign", BRACELET, "--case", "PR-2026-00999", env=enrolled.env,
        cwd=enrolled.tmp,
    )  # fmt: skip
    assert r.rc == 1 and "--reassign" in r.error_line()
    with read_only(enrolled.registry):
        r = run_cli_process("devices", "unassign", BRACELET, env=enrolled.env, cwd=enrolled.tmp)
        assert r.rc == 4 and "readonly" in r.error_line()
    assert enrolled.case(BRACELET) == "PR-2026-00123"
