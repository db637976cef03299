"""`auxilio keys` and `auxilio devices` round trips: state read back from the registry, never a secret in output.

The commands run in process (auxilio.cli.main, as auxilio.testing.tools.run_auxilio
does it); a few run as real processes, for what only a process shows: the exit code
and the one error line of the installed command.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from auxilio import keys
from auxilio.broker.passwords import verify_password
from auxilio.registry import open_registry
from auxilio.testing.tools import run_auxilio


class Cli:
    """Runs `auxilio -vv …` (in process, or `python -m auxilio.cli` with subprocess=True)
    and keeps every byte it printed (logs included)."""

    def __init__(self, tmp: Path, registry_url: str, subprocess: bool = False) -> None:
        self.tmp = tmp
        self.subprocess = subprocess
        self.env = {
            **os.environ,
            "AUXILIO_REGISTRY": registry_url,
            "AUXILIO_KEYS_DIR": str(tmp / "keys"),
            "AUXILIO_LANG": "es",
        }
        self.env.pop("AUXILIO_ACTOR", None)
        self.transcript: list[str] = []

    def __call__(
        self, *args: str, ok: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        if self.subprocess:
            r = subprocess.run(
                [sys.executable, "-m", "auxilio.cli", "-vv", *args],
                capture_output=True,
                text=True,
                timeout=120,
                env=self.env,
                cwd=self.tmp,
                input=stdin,
            )
        else:
            r = run_auxilio(["-vv", *args], env=self.env, cwd=self.tmp, input=stdin)
        self.transcript += [r.stdout, r.stderr]
        assert "Traceback" not in r.stderr, r.stderr
        if ok:
            assert r.returncode == 0, r.stderr
        else:
            assert r.returncode != 0
            errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
            assert len(errors) == 1, r.stderr
        return r

    def assert_no_secret(self, *secrets: str) -> None:
        text = "\n".join(self.transcript).lower()
        for s in secrets:
            assert s.lower() not in text


@pytest.fixture
def cli(tmp_path: Path, registry_url: str) -> Cli:
    c = Cli(tmp_path, registry_url)
    c("keys", "init")
    return c


def _json(r: subprocess.CompletedProcess[str]) -> object:
    return json.loads(r.stdout)


def test_keys_init_and_show(tmp_path: Path) -> None:
    c = Cli(tmp_path, str(tmp_path / "r.db"))
    info = _json(c("keys", "init", "--dir", "k2", "--json"))
    priv = tmp_path / "k2" / "gateway.key"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    before = priv.read_bytes()
    c("keys", "init", "--dir", "k2", ok=False)
    assert priv.read_bytes() == before
    shown = _json(c("keys", "show", "--dir", "k2", "--json"))
    assert shown["public_key"] == info["public_key"]
    assert keys.public_key_text(keys.load_private_key(priv).public_key()) == info["public_key"]
    c("keys", "show", "--dir", "nowhere", ok=False)
    # The private key never appears in any output.
    pem = before.decode()
    body = "".join(pem.splitlines()[1:-1])
    c.assert_no_secret(body)


def test_add_round_trip_and_no_secret_anywhere(cli: Cli, tmp_path: Path, registry_url: str) -> None:
    out = tmp_path / "prov.json"
    r = cli(
        "devices",
        "add",
        "--id",
        "0938-NKRT",
        "--kind",
        "bracelet",
        "--board",
        "bracelet-c3",
        "--fw",
        "1.2.3",
        "--secret-out",
        str(out),
        "--json",
    )
    assert _json(r)["device"] == "0938-NKRT"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    prov = json.loads(out.read_text())
    assert (prov["device"], prov["role"], prov["username"]) == (
        "0938-NKRT",
        "bracelet",
        "0938-NKRT",
    )
    # SPEC §12.1: a config built from the file starts right (a new key: from counter 1).
    assert (prov["key_epoch"], prov["counter_floor"]) == (1, 1)
    # Without --secret-out (table output): the secret only exists sealed in the registry.
    cli("devices", "add", "--kind", "button", "--board", "button-s3")
    cli("devices", "add", "--id", "0938-NKRT", "--kind", "bracelet", "--board", "b", ok=False)
    cli("devices", "add", "--kind", "bracelet", "--board", "b", "--secret-out", str(out), ok=False)
    cli("devices", "list")
    cli("devices", "list", "--json")
    cli("devices", "show", "0938-NKRT")
    cli("devices", "show", "0938-NKRT", "--json")
    cli("devices", "export-csv")

    priv = keys.load_private_key(tmp_path / "keys" / "gateway.key")
    with open_registry(registry_url) as reg:
        recs = reg.list_devices()
        assert len(recs) == 2
        rec = reg.get_device("0938-NKRT")
        assert (rec.kind, rec.board, rec.fw_version, rec.state) == (
            "bracelet",
            "bracelet-c3",
            "1.2.3",
            "spare",
        )
        assert reg.device_secret(rec.id, priv).hex() == prov["secret"]
        assert verify_password(prov["password"], rec.mqtt_password_hash)
        secrets = [reg.device_secret(d.id, priv).hex() for d in recs]
    cli.assert_no_secret(*secrets, prov["password"], rec.mqtt_password_hash)


def test_assign_and_lifecycle_read_back(cli: Cli, registry_url: str) -> None:
    cli("devices", "add", "--id", "0938-NKRT", "--kind", "bracelet", "--board", "bracelet-c3")
    btn = _json(cli("devices", "add", "--kind", "button", "--board", "button-s3", "--json"))[
        "device"
    ]
    cli(
        "devices",
        "assign",
        "0938-nkrt",
        "--case",
        "pr-2026-00123",
        "--to",
        "2030-01-01",
        "--actor",
        "ana",
    )
    cli(
        "devices",
        "assign",
        btn,
        "--site",
        "Av. Juárez y Balderas",
        "--lat",
        "19.4342",
        "--lon",
        "-99.1459",
        "--sector",
        "Centro-3",
        "--actor",
        "ana",
    )
    with open_registry(registry_url) as reg:
        a = reg.current_assignment("0938-NKRT")
        assert a["case_ref"] == "PR-2026-00123" and a["valid_to"].year == 2030
        s = reg.current_assignment(btn)
        assert s["sector"] == "Centro-3" and s["lat"] == pytest.approx(19.4342)
        assert reg.get_device(btn).state == "assigned"
    shown = _json(cli("devices", "show", "0938-NKRT", "--json"))
    assert shown["assignment"]["case_ref"] == "PR-2026-00123"
    assert shown["history"][0]["actor"] == "ana"
    cli("devices", "unassign", btn)
    cli("devices", "mark-lost", "0938-NKRT", "--note", "reported")
    cli("devices", "assign", "0938-NKRT", "--case", "PR-2026-00124", ok=False)
    cli("devices", "revoke", "0938-NKRT")
    cli("devices", "mark-lost", "0938-NKRT", ok=False)
    cli("devices", "retire", "0938-NKRT", "--actor", "luis")
    with open_registry(registry_url) as reg:
        assert reg.get_device("0938-NKRT").state == "retired"
        assert reg.get_device(btn).state == "spare" and reg.current_assignment(btn) is None
        log = reg.audit_log(target="0938-NKRT")
        assert [e["action"] for e in log][:4] == ["retired", "revoked", "mark-lost", "assign"]
        assert log[0]["actor"] == "luis" and "reported" in log[2]["detail"]
    listed = _json(cli("devices", "list", "--state", "retired", "--json"))
    assert [d["device"] for d in listed] == ["0938-NKRT"]


@pytest.mark.parametrize(
    "args",
    [
        ("devices", "show", "0938-NKRX"),  # bad check character
        ("devices", "show", "0000-0000"),
        ("devices", "show", "0938-NKRT"),  # unknown, well formed
        ("devices", "assign", "0938-NKRT", "--case", "Maria Lopez"),
        ("devices", "assign", "0938-NKRT"),
        ("devices", "revoke", "0938-NKRT"),
        ("devices", "add", "--kind", "bracelet", "--board", "x", "--pubkey", "/nonexistent"),
        ("devices", "add", "--kind", "bracelet", "--board", "Bad Board"),
        ("devices", "import-csv", "/nonexistent.csv"),
        ("devices", "list", "--registry", "mysql://x@y/z"),
        ("devices", "list", "--registry", "postgresql://u:pw@127.0.0.1:1/x"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    c = Cli(tmp_path, str(tmp_path / "r.db"))
    c("keys", "init")
    r = c(*args, ok=False)
    assert "pw" not in r.stderr.split("error:", 1)[1]


@pytest.mark.parametrize(
    "args",
    [
        ("devices", "show", "0938-NKRT"),  # a user mistake (AuxilioError)
        ("devices", "list", "--registry", "postgresql://u:pw@127.0.0.1:1/x"),  # unreachable
        ("devices", "frobnicate"),  # a usage error (argparse)
    ],
)
def test_the_installed_command_exits_as_in_process(tmp_path: Path, args: tuple[str, ...]) -> None:
    """The real process gives the exit code and the one `error:` line the in-process run gave."""
    inproc = Cli(tmp_path, str(tmp_path / "r.db"))
    inproc("keys", "init")
    real = Cli(tmp_path, str(tmp_path / "r.db"), subprocess=True)
    r = real(*args, ok=False)
    assert "pw" not in r.stderr.split("error:", 1)[1]
    mine = inproc(*args, ok=False)
    line = lambda p: [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]  # noqa: E731
    assert (r.returncode, line(r)) == (mine.returncode, line(mine))


def test_csv_export_import_round_trip(cli: Cli, tmp_path: Path, registry_url: str) -> None:
    cli(
        "devices",
        "add",
        "--id",
        "0938-NKRT",
        "--kind",
        "bracelet",
        "--board",
        "bracelet-c3",
        "--fw",
        "1.0.0",
    )
    btn = _json(cli("devices", "add", "--kind", "button", "--board", "button-s3", "--json"))[
        "device"
    ]
    lost = _json(cli("devices", "add", "--kind", "bracelet", "--board", "bracelet-c3", "--json"))[
        "device"
    ]
    cli("devices", "assign", "0938-NKRT", "--case", "PR-2026-00123")
    cli(
        "devices",
        "assign",
        btn,
        "--site",
        "Plaza de la Constitución",
        "--lat",
        "19.4326",
        "--lon",
        "-99.1332",
        "--sector",
        "Centro-1",
    )
    cli("devices", "assign", lost, "--case", "PR-2026-00777")
    cli("devices", "mark-lost", lost)
    exported = cli("devices", "export-csv").stdout
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert {r["device"] for r in rows} == {"0938-NKRT", btn, lost}
    assert "secret" not in exported.splitlines()[0]

    # Import into a fresh registry, enrolling the devices (new secrets, files 0600).
    fresh = tmp_path / "fresh.db"
    secrets_dir = tmp_path / "prov"
    secrets_dir.mkdir()
    (tmp_path / "export.csv").write_text(exported)
    cli(
        "devices", "import-csv", "export.csv", "--registry", str(fresh), ok=False
    )  # unknown devices
    summary = _json(
        cli(
            "devices",
            "import-csv",
            "export.csv",
            "--registry",
            str(fresh),
            "--secret-dir",
            str(secrets_dir),
            "--json",
        )
    )
    assert summary["added"] == 3 and summary["assigned"] == 3 and summary["state_changed"] == 1
    for f in secrets_dir.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    again = cli("devices", "export-csv", "--registry", str(fresh)).stdout
    strip = lambda text: sorted(  # noqa: E731 - validity start is "now" on each side
        {k: v for k, v in r.items() if k != "valid_from"}.items()
        for r in csv.DictReader(io.StringIO(text))
    )
    assert strip(again) == strip(exported)
    # Re-import is idempotent.
    summary = _json(cli("devices", "import-csv", "export.csv", "--registry", str(fresh), "--json"))
    assert summary == {"added": 0, "assigned": 0, "state_changed": 0, "unchanged": 3}
    # A bad row aborts before anything changes.
    bad = exported.replace("PR-2026-00123", "Maria Lopez")
    r = cli("devices", "import-csv", "-", "--registry", str(fresh), stdin=bad, ok=False)
    assert "line" in r.stderr
    with open_registry(fresh) as reg:
        assert reg.current_assignment("0938-NKRT")["case_ref"] == "PR-2026-00123"
        assert reg.get_device(lost).state == "lost"
        assert reg.audit_log(limit=1)[0]["action"] == "export-csv"
    prov_secrets = [json.loads(f.read_text())["secret"] for f in secrets_dir.iterdir()]
    cli.assert_no_secret(*prov_secrets)


def test_rekey_a_found_device(cli: Cli, tmp_path: Path, registry_url: str) -> None:
    first, second = tmp_path / "p1.json", tmp_path / "p2.json"
    cli(
        "devices",
        "add",
        "--id",
        "0938-NKRT",
        "--kind",
        "bracelet",
        "--board",
        "bracelet-c3",
        "--secret-out",
        str(first),
    )
    cli("devices", "assign", "0938-NKRT", "--case", "PR-2026-00123")
    cli("devices", "mark-lost", "0938-NKRT")
    with open_registry(registry_url) as reg:  # the C4 had accepted frames under epoch 1
        d, did = reg.tables.devices, reg.require_device("0938-NKRT").id
        with reg.engine.begin() as conn:
            conn.execute(d.update().where(d.c.id == did).values(high_water=900))
        assert reg.counter_floor(did) > 900
    cli("devices", "rekey", "0938-NKRT", ok=False)  # --secret-out is required
    cli("devices", "rekey", "0938-NKRT", "--secret-out", str(first), ok=False)  # never overwrite
    cli("devices", "rekey", "0938-NKRT", "--secret-out", str(second))
    old, new = json.loads(first.read_text()), json.loads(second.read_text())
    assert stat.S_IMODE(second.stat().st_mode) == 0o600
    assert (
        new["key_epoch"] == 2
        and new["counter_floor"] == 1  # a new key is a new keystream: it may start at 1
        and new["secret"] != old["secret"]
        and new["password"] != old["password"]
    )
    priv = keys.load_private_key(tmp_path / "keys" / "gateway.key")
    with open_registry(registry_url) as reg:
        rec = reg.get_device("0938-NKRT")
        assert (rec.state, rec.key_epoch) == ("spare", 2)
        assert reg.current_assignment(rec.id) is None
        assert reg.device_secret(rec.id, priv).hex() == new["secret"]
        assert verify_password(new["password"], rec.mqtt_password_hash)
        assert not verify_password(old["password"], rec.mqtt_password_hash)
    cli.assert_no_secret(old["secret"], new["secret"], old["password"], new["password"])
