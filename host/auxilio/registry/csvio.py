"""CSV export and import of devices and their assignments (never secrets).

Columns: device, kind, board, fw_version, state, case_ref, site, lat, lon, sector,
valid_from, valid_to. Import validates every row before changing anything, is
idempotent (an unchanged row does nothing), and enrols unknown devices only when
given a directory for their provisioning files.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from auxilio.boards import board_for
from auxilio.errors import AuxilioError, UsageError
from auxilio.registry import schema
from auxilio.registry import validate as v
from auxilio.registry.store import TRANSITIONS, Registry

COLUMNS = [
    "device",
    "kind",
    "board",
    "fw_version",
    "state",
    "case_ref",
    "site",
    "lat",
    "lon",
    "sector",
    "valid_from",
    "valid_to",
]
# Largest import accepted in one go (a city's fleet is thousands, not millions).
MAX_ROWS = 100_000
# Bad lines listed one by one after the error line; the rest are counted.
MAX_REPORTED = 50
# The byte-order mark spreadsheets put at the start of a "CSV UTF-8" export.
BOM = "\ufeff"


def export_rows(registry: Registry) -> list[dict[str, Any]]:
    rows = []
    current = registry.current_assignments()
    for rec in registry.list_devices():
        a = current.get(rec.id) or {}
        rows.append(
            {
                "device": rec.label,
                "kind": rec.kind,
                "board": rec.board,
                "fw_version": rec.fw_version or "",
                "state": rec.state,
                "case_ref": a.get("case_ref") or "",
                "site": a.get("site") or "",
                "lat": "" if a.get("lat") is None else repr(a["lat"]),
                "lon": "" if a.get("lon") is None else repr(a["lon"]),
                "sector": a.get("sector") or "",
                "valid_from": a["valid_from"].isoformat() if a.get("valid_from") else "",
                "valid_to": a["valid_to"].isoformat() if a.get("valid_to") else "",
            }
        )
    return rows


def write_csv(rows: Iterable[dict[str, Any]], out: TextIO) -> int:
    w = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    n = 0
    for r in rows:
        w.writerow(r)
        n += 1
    return n


@dataclass
class ImportPlan:
    """Validated rows, ready to apply."""

    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ImportResult:
    added: list[str] = field(default_factory=list)
    assigned: list[str] = field(default_factory=list)
    state_changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    # The new MQTT password of each device enrolled here, for a broker that must be told
    # it (broker/lifecycle.py); only in memory, never printed (not in as_dict).
    passwords: dict[str, str] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": len(self.added),
            "assigned": len(self.assigned),
            "state_changed": len(self.state_changed),
            "unchanged": len(self.unchanged),
        }


def read_csv(text: str, registry: Registry, can_enrol: bool, reassign: bool = False) -> ImportPlan:
    """Parse and validate every row; UsageError listing every bad line (nothing applied).

    Spreadsheet exports are accepted as they come: a UTF-8 byte-order mark,
    `;` or tab separators (Spanish-locale spreadsheets write `;`, with a decimal
    comma in coordinates), header names in any case. ``reassign``: rows may
    replace a device's current case or site (else such a row is a bad line).
    """
    text = text.removeprefix(BOM)
    delimiter = _delimiter(text)
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    if reader.fieldnames is None:
        raise UsageError("CSV is empty (it needs a header row with at least a 'device' column)")
    reader.fieldnames = [(f or "").strip().lower() for f in reader.fieldnames]
    if "device" not in reader.fieldnames:
        raise UsageError(
            "CSV needs a header row with at least a 'device' column "
            f"(found: {', '.join(reader.fieldnames) or 'nothing'})"
        )
    unknown = set(reader.fieldnames) - set(COLUMNS)
    if unknown:
        raise UsageError(f"CSV has unknown column(s): {', '.join(sorted(unknown))}")
    plan = ImportPlan()
    seen: set[int] = set()
    bad: list[str] = []
    for number, raw in enumerate(reader, start=2):
        if number - 1 > MAX_ROWS:
            raise UsageError(f"CSV has more than {MAX_ROWS} rows")
        line = reader.line_num  # the file's line (a quoted cell may span lines)
        if None in raw:
            bad.append(f"line {line}: more cells than columns in the header")
            continue
        r = {k: (raw.get(k) or "").strip() for k in COLUMNS}
        if not any(r.values()):
            continue  # a blank row, as spreadsheets leave at the end
        if delimiter == ";":
            for k in ("lat", "lon"):
                r[k] = r[k].replace(",", ".")  # decimal comma
        try:
            plan.rows.append(_validate_row(r, registry, can_enrol, seen, reassign))
        except AuxilioError as exc:
            bad.append(f"line {line}: {exc}")
    if len(bad) == 1:
        raise UsageError(f"{bad[0]} (nothing was imported)")
    if bad:
        err = UsageError(f"{len(bad)} bad lines in the CSV, nothing was imported:")
        err.details = bad[:MAX_REPORTED]
        if len(bad) > MAX_REPORTED:
            err.details.append(f"... and {len(bad) - MAX_REPORTED} more")
        raise err
    return plan


def _delimiter(text: str) -> str:
    """`,`, `;` or tab: whichever the header row uses most (csv.Sniffer guesses from data)."""
    header = text.split("\n", 1)[0]
    return max((",", ";", "\t"), key=header.count)


def _validate_row(
    r: dict[str, str], registry: Registry, can_enrol: bool, seen: set[int], reassign: bool
) -> dict[str, Any]:
    did = v.device_id(r["device"])
    if did in seen:
        raise UsageError("device listed twice")
    seen.add(did)
    rec = registry.get_device(did)
    out: dict[str, Any] = {"id": did, "existing": rec}
    kind = r["kind"] or (rec.kind if rec else "")
    if kind not in schema.KINDS:
        raise UsageError(f"kind must be one of {', '.join(schema.KINDS)}")
    if rec is not None and rec.kind != kind:
        raise UsageError(f"device is a {rec.kind}, CSV says {kind}")
    out["kind"] = kind
    if rec is None:
        if not can_enrol:
            raise UsageError("unknown device (pass --secret-dir to enrol new devices)")
        out["board"] = board_for(v.board(r["board"]), kind).name
        out["fw_version"] = v.fw_version(r["fw_version"])
    state = r["state"]
    if state and state not in schema.STATES:
        raise UsageError(f"state must be one of {', '.join(schema.STATES)}")
    out["state"] = state
    out["valid_from"] = v.timestamp(r["valid_from"], "valid_from")
    out["valid_to"] = v.timestamp(r["valid_to"], "valid_to")
    if r["case_ref"]:
        if kind != "bracelet":
            raise UsageError("only a bracelet takes a case reference")
        out["case_ref"] = v.case_ref(r["case_ref"])
    elif r["site"] or r["lat"] or r["lon"] or r["sector"]:
        if kind != "button":
            raise UsageError("only a button takes a site")
        out["site"] = v.site(r["site"])
        out["lat"] = v.coordinate(r["lat"], "latitude", 90)
        out["lon"] = v.coordinate(r["lon"], "longitude", 180)
        out["sector"] = v.sector(r["sector"])
    restores = state not in ("revoked", "retired")  # apply_plan skips their assignment
    if rec is not None and restores and not reassign and ("case_ref" in out or "site" in out):
        current = registry.current_assignment(did)
        if current is not None and current["active"] and not _same_place(current, out):
            held = (
                f"case {current['case_ref']}"
                if current["kind"] == "case"
                else f"site {current['site']!r}"
            )
            raise UsageError(
                f"{rec.label} is already assigned to {held}; pass --reassign to replace it"
            )
    return out


def _same_place(current: dict[str, Any], row: dict[str, Any]) -> bool:
    """The row names the device's current case or site (its dates may still change)."""
    keys = ("case_ref",) if "case_ref" in row else ("site", "lat", "lon", "sector")
    return all(current.get(k) == row.get(k) for k in keys)


def _same_assignment(current: dict[str, Any] | None, row: dict[str, Any]) -> bool:
    if current is None or not _same_place(current, row):
        return False
    for k in ("valid_from", "valid_to"):
        if row[k] is not None and current.get(k) != row[k]:
            return False
    return current.get("valid_to") is None or row["valid_to"] is not None


def apply_plan(
    plan: ImportPlan,
    registry: Registry,
    actor: str,
    public_key: Any = None,
    secret_dir: str | os.PathLike[str] | None = None,
) -> ImportResult:
    from auxilio.registry.enrol import enrol_device

    result = ImportResult()
    for row in plan.rows:
        did = row["id"]
        label = v.codec.device_str(did)
        changed = False
        if row["existing"] is None:
            assert public_key is not None and secret_dir is not None
            e = enrol_device(
                registry,
                public_key,
                row["kind"],
                row["board"],
                device_id=did,
                fw_version=row["fw_version"],
                actor=actor,
                secret_out=Path(secret_dir) / f"{label}.json",
            )
            if e.password is not None:
                result.passwords[label] = e.password
            result.added.append(label)
            changed = True
        state = registry.require_device(did).state
        # A row exported from a revoked/retired device carries no assignment to restore.
        wants_assignment = ("case_ref" in row or "site" in row) and row["state"] not in (
            "revoked",
            "retired",
        )
        if wants_assignment and state in ("spare", "assigned"):
            if not _same_assignment(registry.current_assignment(did), row):
                if "case_ref" in row:
                    registry.assign_case(
                        did,
                        row["case_ref"],
                        row["valid_from"],
                        row["valid_to"],
                        actor=actor,
                        reassign=True,  # read_csv refused a replacement without --reassign
                    )
                else:
                    registry.assign_site(
                        did,
                        row["site"],
                        row["lat"],
                        row["lon"],
                        row["sector"],
                        row["valid_from"],
                        row["valid_to"],
                        actor=actor,
                        reassign=True,
                    )
                result.assigned.append(label)
                changed = True
        target = row["state"]
        state = registry.require_device(did).state
        if target and target != state and target in TRANSITIONS[state]:
            registry.set_state(did, target, actor, note="import-csv")
            result.state_changed.append(label)
            changed = True
        if not changed:
            result.unchanged.append(label)
    return result
