"""One provisioning pass: a blank board on a serial port becomes a registered, configured, tested, labelled device.

Steps (each reported by one progress line, Spanish first):

identify   the board's chip MAC, MicroPython and any config it holds (raw REPL)
identity   a printed id with its check character, a fresh 32-byte secret, broker login
register   the secret sealed to the gateway key; the row in state provisioning, audited
configure  config.json written atomically (temp file, sha256 read back, rename)
commit     the row goes in service (spare): the device holds the registered secret
reboot     an EN pulse: the firmware starts with its new config
boot       the gateway stored the device's BOOT and then saw its first HEARTBEAT
test       the live test (the wearer holds the button: a TEST frame, acked, not an alert)
assign     the case reference (bracelet) or site (button)
label      QR code as PNG and SVG, and in the terminal

Recovery (issue 11 §7). The registry row is in service only once the device
holds its secret: the row is registered `provisioning` (no broker login,
frames rejected), and committed after the written config read back with the
registered secret's `key_id`. A re-run first compares the board's config
(device id, key epoch, key id) with the registry: a board that matches a
row in service is resumed from the reboot; one that matches a provisioning
row is committed; anything else (no config, a half-written one, another
secret) is provisioned again with a new key epoch. A run that fails before
the device's BOOT reached the C4 rolls back what it created.

Test hook: AUXILIO_PROVISION_DIE_AT=<step> SIGKILLs this process right after
that step ("configure-copied": after the temp file was copied, before the
rename), so the tests can interrupt a run at each step.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auxilio.boards import board_for, load_board
from auxilio.errors import AuxilioError, ConnectionFailed, NotFoundError, UsageError
from auxilio.i18n import _
from auxilio.keys import seal, sealed_id
from auxilio.provision import writer
from auxilio.provision.config import PROVISION_TUNABLES, check_config, device_config
from auxilio.provision.identity import Identity, new_identity, random_device_id
from auxilio.registry import validate as v

log = logging.getLogger(__name__)

STEPS = (
    "identify",
    "identity",
    "register",
    "configure",
    "commit",
    "reboot",
    "boot",
    "test",
    "assign",
    "label",
)
DIE_ENV = "AUXILIO_PROVISION_DIE_AT"
# How long the C4 gets to store the BOOT, then to see the first HEARTBEAT (the firmware
# beats PROVISION_TUNABLES["first_heartbeat_s"] after boot; connecting takes a few s).
BOOT_TIMEOUT_S = 60.0
HEARTBEAT_TIMEOUT_S = 30.0
POLL_S = 0.1  # registry polling while waiting for the gateway
BROKER_CONNECT_TIMEOUT_S = 3.0  # the broker pre-check (a TCP connect)
# The live test's window (SPEC §8.10.1): the wearer's one press in it is a TEST, not an
# ALERT. Two minutes to explain and press; the device caps it at 600 s.
TEST_WINDOW_S = 120
# The gateway pre-check: a self-test request for an unregistered id is answered
# "failed: unknown_device" at once by a running gateway (and changes nothing).
GATEWAY_CHECK_TIMEOUT_S = 10.0


class ProvisionError(AuxilioError):
    """A provisioning step failed; str() names the step and the reason in one line."""


@dataclass
class Request:
    """What one provisioning pass is asked to do (validated by `check_request`)."""

    port: str
    role: str
    broker_url: str  # what the device connects to (mqtt://host:port, mqtts:// with tls_ca)
    registry: Any  # an open Registry (read-write: the station registers)
    public_key: Any  # the gateway's X25519 public key (the station holds only that)
    board: str | None = None  # default: the board.json on the device
    case: str | None = None
    site: str | None = None
    lat: float | str | None = None
    lon: float | str | None = None
    sector: str | None = None
    reassign: bool = False
    force: bool = False  # allow a case reference another bracelet already holds
    net: dict[str, Any] | None = None  # provision.config.network(...)
    tls_ca: bytes | None = None  # DER CA for mqtts:// (written as ca.der)
    prefix: str = "auxilio"
    settings: dict[str, Any] = field(default_factory=dict)
    actor: str = "provision"
    station: str = field(default_factory=socket.gethostname)
    label_dir: Path = Path("labels")
    live_test: bool = True
    boot_timeout: float = BOOT_TIMEOUT_S
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S
    # Called after the registry changed what the broker must know (commit, resume,
    # rollback) with (device id, its new MQTT password or None): the broker's own
    # interface (dynsec) or a reload. None: the broker learns by itself.
    broker_sync: Callable[[int, str | None], None] | None = None
    # The station's own broker login (operator.json path or {"username", "password"}): it
    # asks the gateway for the live test (auxilio.selftest) and checks the gateway answers.
    # None: no live test, and no gateway check before registering.
    broker_credentials: Any = None
    test_window_s: int = TEST_WINDOW_S
    press_lock: threading.Lock | None = None  # a batch: one wearer's press at a time
    gateway_checked: bool = False  # a batch checks the gateway once (one operator login)
    cancel: threading.Event | None = None


@dataclass
class Result:
    """What a pass did (no secret in here: it goes to --json and reports)."""

    port: str
    role: str
    device: str | None = None
    board: str | None = None
    mac: str | None = None
    key_epoch: int | None = None
    counter_floor: int | None = None
    key_id: str | None = None
    config_sha256: str | None = None
    assignment: str | None = None
    label_png: str | None = None
    label_svg: str | None = None
    qr_payload: str | None = None
    resumed: bool = False
    boot_s: float | None = None
    heartbeat_s: float | None = None
    test_ms: float | None = None
    press_wait_s: float | None = None  # how long the wearer took to press (reported apart)
    test_counter: int | None = None  # the TEST frame's counter at the C4
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds
    ok: bool = False
    error: str | None = None
    failed_step: str | None = None
    rolled_back: str | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _die_here(step: str) -> None:
    if os.environ.get(DIE_ENV) == step:
        log.warning("provision: test hook %s=%s: dying", DIE_ENV, step)
        os.kill(os.getpid(), signal.SIGKILL)


def check_request(req: Request, offline: bool = False) -> tuple[dict[str, Any], str | None]:
    """Everything checked before any board or registry is touched: (assignment, board name).

    One line per mistake (UsageError): role, case reference (never a name), site
    fields and coordinates, board, broker reachable. (A duplicate case reference
    is checked once the board is identified: its own case is no duplicate.)
    ``offline``: only what needs no network (a batch checks every row first).
    """
    if req.role not in ("bracelet", "button"):
        raise UsageError("--role must be bracelet or button")
    site_args = (req.site, req.lat, req.lon, req.sector)
    assignment: dict[str, Any] = {}
    if req.role == "bracelet":
        if any(x is not None for x in site_args):
            raise UsageError("a bracelet takes --case, not --site/--lat/--lon/--sector")
        if req.case:
            assignment = {"case": v.case_ref(req.case)}
    else:
        if req.case:
            raise UsageError("a button takes --site, --lat, --lon and --sector, not --case")
        if any(x is not None for x in site_args):
            if not all(x is not None for x in site_args):
                raise UsageError("a button's site needs --site, --lat, --lon and --sector")
            assignment = {
                "site": v.site(str(req.site)),
                "lat": v.coordinate(req.lat, "latitude", 90),  # type: ignore[arg-type]
                "lon": v.coordinate(req.lon, "longitude", 180),  # type: ignore[arg-type]
                "sector": v.sector(str(req.sector)),
            }
    board = None
    if req.board:
        board = board_for(req.board, req.role).name
    if not offline:
        _broker_reachable(req.broker_url)
        if req.broker_credentials is not None and not req.gateway_checked:
            gateway_answers(req)
    return assignment, board


def gateway_answers(req: Request) -> None:
    """The C4 gateway is running and listening (before anything is registered)."""
    from auxilio.selftest import NO_ANSWER, request_selftest

    probe = random_device_id()
    while req.registry.get_device(probe) is not None:  # pragma: no cover - 2^32 ids
        probe = random_device_id()
    res = request_selftest(
        req.broker_url,
        req.broker_credentials,
        req.prefix,
        probe,
        mode="now",
        timeout=GATEWAY_CHECK_TIMEOUT_S,
    )
    if res.state == NO_ANSWER:
        raise ConnectionFailed(
            f"the C4 gateway does not answer on {req.broker_url} (is it running?); "
            "nothing was provisioned"
        )


def check_duplicate_case(
    req: Request, assignment: dict[str, Any], device: int | None
) -> str | None:
    """A case reference another bracelet holds: refused, or with --force a warning (returned)."""
    if "case" not in assignment:
        return None
    holders = [
        d
        for d, a in req.registry.current_assignments().items()
        if a.get("case_ref") == assignment["case"] and d != device
    ]
    if not holders:
        return None
    from auxilio.protocol import codec

    names = ", ".join(codec.device_str(d) for d in holders)
    if not req.force:
        raise UsageError(
            f"case {assignment['case']} is already assigned to {names}: check the reference, "
            "or pass --force to give this case a second bracelet"
        )
    return _("aviso: el caso {ref} ya tiene otra pulsera ({devices})").format(
        ref=assignment["case"], devices=names
    )


def _broker_reachable(url: str) -> None:
    from auxilio.broker.url import parse_broker_url

    addr = parse_broker_url(url)
    try:
        with socket.create_connection((addr.host, addr.port), timeout=BROKER_CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConnectionFailed(
            f"broker {addr.host}:{addr.port} unreachable ({exc.strerror or exc}); "
            "nothing was provisioned"
        ) from None


def _assignment_text(a: dict[str, Any]) -> str:
    if "case" in a:
        return _("caso {ref}").format(ref=a["case"])
    if "site" in a:
        return _("sitio {site} ({sector})").format(site=a["site"], sector=a["sector"])
    return ""


def _same_assignment(held: dict[str, Any] | None, want: dict[str, Any]) -> bool:
    if held is None or not want:
        return False
    if "case" in want:
        return held.get("case_ref") == want["case"]
    return held.get("site") == want["site"] and held.get("sector") == want["sector"]


class Pass:
    """One run of the steps for one port (`provision()` is the entry point)."""

    def __init__(self, req: Request, say: Callable[[str], None]) -> None:
        self.req = req
        self.say = say
        self.reg = req.registry
        self.res = Result(port=req.port, role=req.role)
        self.created = False  # this pass made a new registry row (a rollback may remove it)
        self.committed_here = False
        self.booted = False

    def _step(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        try:
            out = fn()
        except AuxilioError as exc:
            self.res.failed_step = name
            raise ProvisionError(f"{name}: {exc}") from None
        self.res.steps[name] = round(time.monotonic() - t0, 3)
        _die_here(name)
        return out

    # -------------------------------------------------------------- steps ---

    def run(self) -> Result:
        req = self.req
        assignment, board_name = check_request(req)
        state = self._step("identify", self._identify)
        board_name = board_name or state.board or None
        if board_name is None:
            raise ProvisionError("identify: the device has no board.json: give --board NAME")
        board = board_for(board_name, req.role)
        self.res.board = board.name
        rec, mode = self._match(state, assignment)
        warning = check_duplicate_case(req, assignment, rec.id if rec is not None else None)
        if warning is not None:
            self.res.warnings.append(warning)
            self.say(warning)
        try:
            if mode == "resume":
                ident = None
                self.say(
                    _("Identidad {device}: ya registrada y en el dispositivo, se retoma").format(
                        device=rec.label
                    )
                )
                self.res.resumed = True
                self._fill(rec)
                self._sync(rec.id)  # a run killed after its commit may not have told the broker
            elif mode == "commit":
                self.res.resumed = True
                self._fill(rec)
                self.res.config_sha256 = state.sha256
                self._step("commit", lambda: self._commit(rec.id, rec.sealed_secret, None))
            else:
                did = rec.id if rec is not None else self._free_id(state)
                ident = self._step("identity", lambda: new_identity(did))
                cfg_probe = self._config(ident, board)
                check_config(cfg_probe, board)  # the firmware's own checks, before registering
                sealed = self._step("register", lambda: self._register(ident, board, state))
                ident = ident.with_registry(
                    self.res.key_epoch or 1, self.reg.counter_floor(ident.device), sealed
                )
                self.res.counter_floor = ident.counter_floor
                self.res.key_id = ident.key_id
                self._step("configure", lambda: self._configure(ident, board))
                self._step("commit", lambda: self._commit(ident.device, sealed, ident.password))
            device = self.res.device
            assert device is not None
            self._step("reboot", self._reboot)
            self._step("boot", lambda: self._wait_boot(v.device_id(device)))
        except BaseException as exc:
            self._rollback(exc)
            raise
        self._step("test", lambda: self._live_test(v.device_id(device)))
        self._step("assign", lambda: self._assign(v.device_id(device), assignment))
        self._step("label", lambda: self._label(device))
        self.res.ok = True
        return self.res

    def _identify(self) -> writer.DeviceState:
        self.say(_("Identificando el dispositivo en {port}…").format(port=self.req.port))
        st = writer.read_device(self.req.port, self.req.cancel)
        what = (
            _("configuración a medias")
            if st.half_written or st.corrupt
            else _("configurado como {device}").format(device=st.device)
            if st.device
            else _("sin configuración")
        )
        self.res.mac = st.mac
        self.say(
            _("Dispositivo {mac}: MicroPython {mp}, {what}").format(
                mac=st.mac or "?", mp=st.micropython, what=what
            )
        )
        return st

    def _match(self, st: writer.DeviceState, want: dict[str, Any]) -> tuple[Any, str]:
        """The registry row this board is (or None) and what to do: resume, commit or fresh."""
        rec = None
        if st.device:
            try:
                rec = self.reg.get_device(st.device)
            except UsageError:
                rec = None
        if rec is None and st.mac:
            did = self.reg.provisioning_for_mac(st.mac)
            rec = self.reg.get_device(did) if did is not None else None
        if rec is not None and rec.kind != self.req.role:
            raise ProvisionError(
                f"identify: {rec.label} is registered as a {rec.kind}, not a {self.req.role}"
            )
        if rec is not None and rec.state == "retired":
            raise ProvisionError(f"identify: {rec.label} is retired; it is not provisioned again")
        held = self.reg.current_assignment(rec.id) if rec is not None else None
        same = _same_assignment(held, want)
        if held is not None and not same and not self.req.reassign:
            what = (
                f"case {held['case_ref']}" if held["kind"] == "case" else f"site {held['site']!r}"
            )
            raise ProvisionError(
                f"identify: {rec.label} is assigned to {what}; pass --reassign to provision "
                "it for someone else (it gets a new key)"
            )
        cfg = st.config or {}
        matches = (
            rec is not None
            and not st.half_written
            and cfg.get("device") == rec.label
            and cfg.get("key_epoch") == rec.key_epoch
            and cfg.get("key_id") == sealed_id(rec.sealed_secret)
        )
        if matches and rec.state == "provisioning":
            return rec, "commit"
        if matches and rec.state in ("spare", "assigned") and (held is None or same):
            return rec, "resume"
        return rec, "fresh"

    def _fill(self, rec: Any) -> None:
        self.res.device = rec.label
        self.res.key_epoch = rec.key_epoch
        self.res.key_id = sealed_id(rec.sealed_secret)

    def _free_id(self, st: writer.DeviceState) -> int:
        """The device id: the one a half-provisioned board already carries, else a free random one."""
        if st.device:
            try:
                return v.device_id(st.device)
            except UsageError:
                pass
        for _i in range(20):
            did = random_device_id()
            if self.reg.get_device(did) is None:
                return did
        raise ProvisionError("identity: no free device id found")  # pragma: no cover

    def _config(self, ident: Identity, board: Any) -> dict[str, Any]:
        req = self.req
        return device_config(
            ident,
            req.role,
            req.broker_url,
            net=req.net,
            tls_ca=writer.CA_FILE if req.tls_ca else None,
            prefix=req.prefix,
            settings=req.settings,
            tunables=PROVISION_TUNABLES,
        )

    def _register(self, ident: Identity, board: Any, st: writer.DeviceState) -> bytes:
        from auxilio.broker.passwords import hash_password

        existed = self.reg.get_device(ident.device) is not None
        sealed = seal(ident.secret, self.req.public_key, ident.device)
        assert ident.password is not None
        epoch = self.reg.begin_provisioning(
            ident.device,
            self.req.role,
            board.name,
            sealed,
            actor=self.req.actor,
            mqtt_password_hash=hash_password(ident.password),
            mac=st.mac,
            station=self.req.station,
        )
        self.created = not existed
        self.res.device = ident.label
        self.res.key_epoch = epoch
        self.say(
            _("Identidad {device} creada (época de clave {epoch})").format(
                device=ident.label, epoch=epoch
            )
        )
        self.say(
            _("Secreto sellado y registrado; auditado ({actor} en {station})").format(
                actor=self.req.actor, station=self.req.station
            )
        )
        return sealed

    def _configure(self, ident: Identity, board: Any) -> None:
        cfg = self._config(ident, board)
        files = {writer.CA_FILE: self.req.tls_ca} if self.req.tls_ca else {}
        half = os.environ.get(DIE_ENV) == "configure-copied"
        sha = writer.write_config(
            self.req.port, cfg, files, cancel=self.req.cancel, stop_after_copy=half
        )
        if half:
            _die_here("configure-copied")
        self.res.config_sha256 = sha
        self.say(_("Configuración escrita y verificada (sha256 {sha})").format(sha=sha[:16]))

    def _commit(self, device: int, sealed: bytes, password: str | None) -> None:
        self.reg.commit_provisioning(device, sealed_id(sealed), self.req.actor)
        self.committed_here = True
        self._sync(device, password)
        self.say(_("Dispositivo en servicio (registro confirmado)"))

    def _sync(self, device: int, password: str | None = None) -> None:
        if self.req.broker_sync is not None:
            self.req.broker_sync(device, password)

    def _reboot(self) -> None:
        self.say(_("Reiniciando el dispositivo…"))
        self._boot_mark = self._last_boot(v.device_id(self.res.device or ""))
        self._reboot_at = time.monotonic()
        writer.reboot(self.req.port)

    def _last_boot(self, device: int) -> int:
        from sqlalchemy import func, select

        a = self.reg.tables.alerts
        with self.reg.reader.connect() as conn:
            return int(
                conn.execute(
                    select(func.max(a.c.id)).where(a.c.device_id == device, a.c.type == "BOOT")
                ).scalar()
                or 0
            )

    def _wait_boot(self, device: int) -> None:
        """The BOOT the gateway stored after our reboot, then a later accepted frame (the beat)."""
        from sqlalchemy import select

        a, d = self.reg.tables.alerts, self.reg.tables.devices
        epoch = self.res.key_epoch
        deadline = time.monotonic() + self.req.boot_timeout
        boot = None
        while boot is None:
            with self.reg.reader.connect() as conn:
                boot = conn.execute(
                    select(a.c.counter)
                    .where(
                        a.c.device_id == device,
                        a.c.type == "BOOT",
                        a.c.key_epoch == epoch,
                        a.c.id > self._boot_mark,
                    )
                    .order_by(a.c.id)
                    .limit(1)
                ).scalar()
            if boot is None:
                self._wait(deadline, "the C4 gateway did not store the device's BOOT")
        self.res.boot_s = round(time.monotonic() - self._reboot_at, 2)
        deadline = time.monotonic() + self.req.heartbeat_timeout
        while True:
            with self.reg.reader.connect() as conn:
                hw = conn.execute(select(d.c.high_water).where(d.c.id == device)).scalar()
            if hw is not None and hw > boot:
                break
            self._wait(deadline, "the C4 gateway saw no HEARTBEAT after the BOOT")
        self.booted = True
        self.res.heartbeat_s = round(time.monotonic() - self._reboot_at, 2)
        self.say(
            _("Arranque recibido por el C4 en {s:.1f} s; primer latido en {hb:.1f} s").format(
                s=self.res.boot_s, hb=self.res.heartbeat_s
            )
        )

    def _wait(self, deadline: float, what: str) -> None:
        if self.req.cancel is not None and self.req.cancel.is_set():
            raise ProvisionError("interrupted")
        if time.monotonic() > deadline:
            raise ConnectionFailed(f"{what} (is the gateway running, and the broker reachable?)")
        time.sleep(POLL_S)

    def _live_test(self, device: int) -> None:
        """Window mode (SPEC §8.10.1): staff ask the wearer to press; that press is a TEST."""
        if not self.req.live_test or self.req.broker_credentials is None:
            self.say(_("Prueba en vivo omitida"))
            return
        if self.req.press_lock is not None:
            with self.req.press_lock:
                self._press_test(device)
        else:
            self._press_test(device)

    def _press_test(self, device: int) -> None:
        from auxilio.selftest import request_selftest

        asked: list[float] = []

        def on_state(answer: dict[str, Any]) -> None:
            # Only once the gateway sent the window: a press before it would be an ALERT.
            if answer.get("state") == "sent" and not asked:
                asked.append(time.monotonic())
                self.say(_("Prueba en vivo: pida a la usuaria que mantenga pulsado el botón"))

        res = request_selftest(
            self.req.broker_url,
            self.req.broker_credentials,
            self.req.prefix,
            device,
            mode="window",
            seconds=self.req.test_window_s,
            operator=self.req.actor,
            on_state=on_state,
        )
        if not res.ok:
            why = res.reason or res.state
            raise ConnectionFailed(
                f"no TEST from the device ({why}); it is registered and configured: "
                "run provision again to repeat the test"
            )
        done = time.monotonic()
        # test_ms: the press (its start, as the device stamps it, in whole seconds) to the
        # C4 storing the TEST, the hold gesture included. press_wait_s: staff asked -> TEST
        # stored, the part of a provisioning that is the wearer's (reported apart).
        latency = res.press_to_store_ms
        self.res.test_ms = round(float(latency), 1) if latency is not None else None
        if asked:
            self.res.press_wait_s = round(done - asked[0], 2)
        self.res.test_counter = res.counter
        self.say(
            _("Prueba recibida y confirmada en {ms:.0f} ms (no se reenvía como alerta)").format(
                ms=self.res.test_ms or 0.0
            )
        )

    def _assign(self, device: int, want: dict[str, Any]) -> None:
        if not want:
            return
        held = self.reg.current_assignment(device)
        if not _same_assignment(held, want):
            if "case" in want:
                self.reg.assign_case(device, want["case"], actor=self.req.actor, reassign=True)
            else:
                self.reg.assign_site(
                    device,
                    want["site"],
                    want["lat"],
                    want["lon"],
                    want["sector"],
                    actor=self.req.actor,
                    reassign=True,
                )
        self.res.assignment = _assignment_text(want)
        self.say(_("Asignado a {what}").format(what=self.res.assignment))

    def _label(self, device: str) -> None:
        from auxilio.provision import label

        files = label.write(device, self.req.label_dir)
        self.res.label_png, self.res.label_svg = str(files.png), str(files.svg)
        self.res.qr_payload = files.payload
        self.say(_("Etiqueta: {png} y {svg}").format(png=files.png, svg=files.svg))

    # ----------------------------------------------------------- rollback ---

    def _rollback(self, exc: BaseException) -> None:
        """Undo what this pass created when it failed before the C4 heard the device."""
        device = self.res.device
        if device is None or self.booted:
            return
        did = v.device_id(device)
        rec = self.reg.get_device(did)
        if rec is None:
            return
        what = []
        removed = False
        try:
            states = ("provisioning", "spare") if self.committed_here else ("provisioning",)
            if rec.state in states:
                removed = self.reg.abandon_provisioning(
                    did, self.req.actor, f"error={type(exc).__name__}", states
                )
                what.append("registro eliminado" if removed else "registro sin servicio")
                self._sync(did)
            if removed and self.res.config_sha256:
                # Only with the row gone: a board without config and a row in service
                # would be the one inconsistency this module exists to prevent.
                writer.remove_config(self.req.port)
                what.append("configuración borrada del dispositivo")
        except AuxilioError as again:
            log.warning("provision: rollback of %s incomplete: %s", device, again)
            what.append(f"incompleto: {again}")
        if what:
            self.res.rolled_back = ", ".join(what)
            self.say(_("Aprovisionamiento deshecho: {what}").format(what=self.res.rolled_back))


def broker_authority_sync(admin: Any, registry: Any) -> Callable[[int, str | None], None]:
    """A Request.broker_sync that tells the broker (auxilio.broker.authority) at once.

    ``admin``: the broker admin file's AdminConfig (broker.lifecycle.load_admin). A
    device the registry no longer holds (a rolled-back provisioning) is removed; any
    other is mirrored as the registry has it (in service: its login; else none). A
    broker that cannot be told is one warning line: its BOOT then never arrives, and
    the run rolls back.
    """
    from auxilio.broker.authority import open_authority
    from auxilio.broker.lifecycle import after_change
    from auxilio.protocol import codec

    lock = threading.Lock()  # batch rows commit from several threads

    def sync(device: int, password: str | None) -> None:
        with lock:
            if registry.get_device(device) is not None:
                after_change(admin, registry, device, password)
                return
            authority = open_authority(admin)
            try:
                authority.remove_device(codec.device_str(device))
            finally:
                authority.close()

    return sync


def provision(req: Request, say: Callable[[str], None] | None = None) -> Result:
    """Provision the board on req.port in one pass; raises ProvisionError/AuxilioError on failure."""
    return Pass(req, say or (lambda _line: None)).run()


def resolve_port(spec: str) -> str:
    """A --port value as the URL mpremote opens (a virtual board's rfc2217://, a tty, a serial no.)."""
    from auxilio.flash.ports import resolve_port as resolve

    try:
        return resolve(spec).url
    except NotFoundError:
        raise
    except AuxilioError as exc:  # pragma: no cover - resolve raises NotFound/Usage only
        raise UsageError(str(exc)) from None


def default_board(role: str) -> str:
    """The first board in boards/ that can take this role (for a board with no board.json)."""
    from auxilio.boards import boards_with_role

    names = boards_with_role(role)
    if not names:
        raise UsageError(f"no board in boards/ can be a {role}")
    return load_board(names[0]).name
