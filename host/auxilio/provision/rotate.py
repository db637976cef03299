"""Key rotation over serial: a device in service gets a new secret, key epoch + 1, and the old key a grace.

Steps (each reported by one progress line, Spanish first):

identify   the board's config (device id, key epoch, key id) matched with its registry row
identity   a fresh 32-byte secret and MQTT password, sealed to the gateway key
stage      the board writes config.json.tmp: its own config with the new identity over it
rekey      the registry takes the new sealed secret (epoch + 1); the old key stays valid
           for the grace (Registry.rekey, SPEC §12.1); audited with station and operator
configure  config.json.tmp renamed over config.json only if its sha256 is the staged one
broker     the broker learns the new login at once (broker_sync)
reboot     an EN pulse: the firmware starts with its new key
boot       the gateway stored the device's BOOT under the NEW epoch, then a HEARTBEAT

Why stage before the rekey (issue 11 §7: never a registry key the device cannot
get). The station holds only the gateway's public key: once this process is gone
the new secret exists only where it was written. So it is on the board's flash
(config.json.tmp) before the registry knows it. A re-run compares the board with
the registry (the provisioning pattern, run.Pass._match): a staged file whose key
id is the registry's current one, beside a config.json one epoch behind, is a
rotation killed after its rekey: it is renamed and the run finishes. A staged file
the registry does not know (killed before the rekey) is simply written over.
A config.json already on the current key whose rotation was never confirmed (the
newest rotate audit entry has no rotate-done) is resumed from the broker step.

Test hook: run.DIE_ENV=<step> SIGKILLs this process right after that step.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from auxilio.errors import UsageError
from auxilio.i18n import _
from auxilio.keys import seal, sealed_id
from auxilio.lifecycle import DEFAULT_REKEY_GRACE_S
from auxilio.provision import writer
from auxilio.provision.identity import FIRST_COUNTER, new_identity
from auxilio.provision.run import BOOT_TIMEOUT_S, HEARTBEAT_TIMEOUT_S, Pass, ProvisionError
from auxilio.registry import validate as v

STEPS = ("identify", "identity", "stage", "rekey", "configure", "broker", "reboot", "boot")
IN_SERVICE = ("spare", "assigned")
# Audit actions this module writes (the rekey itself is Registry.rekey's "rekey" row).
AUDIT_BEGIN, AUDIT_DONE = "rotate-key", "rotate-done"
# Why a device cannot be rotated, by registry state (one line each).
_REFUSED = {
    "provisioning": "its provisioning did not finish: run `auxilio provision --port` again",
    "lost": "a lost device gets a new key with `auxilio provision --reassign` "
    "(its old key may be in other hands: no grace)",
    "revoked": "a revoked device gets a new key with `auxilio provision --reassign` "
    "(its old key gets no grace)",
    "retired": "it is retired",
}


@dataclass
class RotateRequest:
    """What one rotation is asked to do."""

    port: str
    registry: Any  # an open Registry (read-write)
    public_key: Any  # the gateway's X25519 public key (the station holds only that)
    grace_s: float = DEFAULT_REKEY_GRACE_S  # how long frames under the old key still count
    actor: str = "rotate-key"
    station: str = field(default_factory=socket.gethostname)
    # (device id, new MQTT password or None): the broker's own interface (run.broker_authority_sync).
    broker_sync: Callable[[int, str | None], None] | None = None
    boot_timeout: float = BOOT_TIMEOUT_S
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S
    cancel: threading.Event | None = None


@dataclass
class RotateResult:
    """What a rotation did (no secret in here: it goes to --json)."""

    port: str
    device: str | None = None
    role: str | None = None
    old_epoch: int | None = None
    key_epoch: int | None = None
    key_id: str | None = None
    config_sha256: str | None = None
    grace_s: float | None = None
    grace_until: str | None = None  # when frames under the old key stop counting (UTC)
    resumed: str | None = None  # "finish" (staged, renamed now) or "resume" (rebooted now)
    boot_s: float | None = None
    heartbeat_s: float | None = None
    steps: dict[str, float] = field(default_factory=dict)
    ok: bool = False
    failed_step: str | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Rotation(Pass):
    """One rotation on one port (`rotate_key()` is the entry point); reuses Pass's reboot and wait."""

    def __init__(self, req: RotateRequest, say: Callable[[str], None]) -> None:
        self.req = req  # type: ignore[assignment]  # the fields Pass's reboot/boot steps use
        self.say = say
        self.reg = req.registry
        self.res = RotateResult(port=req.port)  # type: ignore[assignment]
        self.booted = False

    def run(self) -> RotateResult:  # type: ignore[override]
        req = self.req
        v.rekey_grace(req.grace_s)  # one line before the board is touched
        st = self._step("identify", self._identify_board)
        rec, mode = self._match_board(st)
        res = self.res
        res.device, res.role = rec.label, rec.kind
        password: str | None = None
        if mode == "rotate":
            res.old_epoch = rec.key_epoch
            ident = self._step("identity", lambda: self._identity(rec))
            password = ident.password
            staged = self._step("stage", lambda: self._stage(ident))
            self._step("rekey", lambda: self._rekey(rec, ident))
            sha = staged.sha256
        else:
            res.resumed = mode
            res.old_epoch = rec.key_epoch - 1
            res.key_epoch, res.key_id = rec.key_epoch, sealed_id(rec.sealed_secret)
            self._grace_of(rec)
            sha = st.staged_sha256 or ""
            self.say(
                _("Rotación de {device} interrumpida: se completa (época {epoch})").format(
                    device=rec.label, epoch=rec.key_epoch
                )
            )
        try:
            if mode in ("rotate", "finish"):
                self._step("configure", lambda: self._configure(sha))
            else:
                res.config_sha256 = st.sha256
            self._step("broker", lambda: self._sync(rec.id, password))
            self._step("reboot", self._reboot)
            self._step("boot", lambda: self._wait_boot(rec.id))
        except ProvisionError as exc:
            # The registry holds the new key and the board has it (staged or in place).
            raise ProvisionError(
                f"{exc}; the new key is on the device: run `auxilio rotate-key --port` "
                "again to finish"
            ) from None
        self.reg.audit(
            req.actor,
            AUDIT_DONE,
            rec.label,
            f"epoch={res.key_epoch} station={req.station[:64]} boot_s={res.boot_s}",
        )
        res.ok = True
        return res  # type: ignore[return-value]

    # -------------------------------------------------------------- steps ---

    def _identify_board(self) -> writer.DeviceState:
        self.say(_("Identificando el dispositivo en {port}…").format(port=self.req.port))
        return writer.read_device(self.req.port, self.req.cancel)

    def _match_board(self, st: writer.DeviceState) -> tuple[Any, str]:
        """The row this board is in service as, and what to do: rotate, finish or resume."""
        cfg = st.config or {}
        if not st.device:
            raise ProvisionError(
                "identify: the device holds no Auxilio config (a spare board?): "
                "provision it with `auxilio provision --port`"
            )
        try:
            rec = self.reg.get_device(st.device)
        except UsageError:
            rec = None
        if rec is None:
            raise ProvisionError(f"identify: {st.device} is not in the registry")
        if rec.state not in IN_SERVICE:
            why = _REFUSED.get(rec.state, rec.state)
            raise ProvisionError(f"identify: {rec.label} is {rec.state}; {why}")
        current = sealed_id(rec.sealed_secret)
        on_current = cfg.get("key_epoch") == rec.key_epoch and cfg.get("key_id") == current
        staged = st.staged or {}
        staged_current = (
            staged.get("device") == rec.label
            and staged.get("key_epoch") == rec.key_epoch
            and staged.get("key_id") == current
        )
        if staged_current and not on_current:
            return rec, "finish"  # killed after the rekey, before the rename
        if on_current:
            return rec, ("resume" if self._unconfirmed(rec.label) else "rotate")
        prev = rec.previous_key
        if prev is not None and cfg.get("key_epoch") == prev.epoch:
            # The staged copy of the registry's key is gone (not by this module): a new
            # rotation gives the device a key it holds again.
            warning = _("aviso: la clave nueva de {device} no estaba en el dispositivo").format(
                device=rec.label
            )
            self.res.warnings.append(warning)
            self.say(warning)
            return rec, "rotate"
        raise ProvisionError(
            f"identify: {rec.label} holds key epoch {cfg.get('key_epoch')} but the registry "
            f"has epoch {rec.key_epoch} (another key): provision it again with "
            "`auxilio provision --port … --reassign`"
        )

    def _unconfirmed(self, label: str) -> bool:
        """The newest rotation of this device has no rotate-done (its BOOT never came)."""
        for entry in self.reg.audit_log(limit=50, target=label):  # newest first
            if entry["action"] == AUDIT_BEGIN:
                return True
            if entry["action"] in (AUDIT_DONE, "provision-commit"):
                return False
        return False

    def _identity(self, rec: Any) -> Any:
        ident = new_identity(rec.id)
        sealed = seal(ident.secret, self.req.public_key, rec.id)
        # A fresh secret never signed a frame: its counters start at the first one (SPEC §12.1).
        ident = ident.with_registry(rec.key_epoch + 1, FIRST_COUNTER, sealed)
        self._sealed = sealed
        self.say(
            _("Clave nueva para {device} (época {old} → {new})").format(
                device=rec.label, old=rec.key_epoch, new=ident.key_epoch
            )
        )
        return ident

    def _stage(self, ident: Any) -> writer.Staged:
        staged = writer.stage_identity(self.req.port, ident.fields(), self.req.cancel)
        want = {
            "device": ident.label,
            "key_epoch": ident.key_epoch,
            "key_id": ident.key_id,
            "counter_floor": ident.counter_floor,
        }
        got = {k: staged.config.get(k) for k in want}
        if got != want or staged.identity != writer.identity_digest(
            ident.secret.hex(), ident.password
        ):
            raise writer.DeviceWriteError(
                f"the staged config on {self.req.port} does not hold the new key; "
                "the registry was not changed"
            )
        self.say(_("Configuración nueva preparada en el dispositivo"))
        return staged

    def _rekey(self, rec: Any, ident: Any) -> None:
        from auxilio.broker.passwords import hash_password

        req = self.req
        assert ident.password is not None
        epoch = self.reg.rekey(
            rec.id,
            self._sealed,
            req.actor,
            mqtt_password_hash=hash_password(ident.password),
            grace_s=req.grace_s,
        )
        if epoch != ident.key_epoch:  # another station re-keyed it meanwhile
            raise ProvisionError(
                f"rekey: {rec.label} went to epoch {epoch}, not {ident.key_epoch}: "
                "run rotate-key again"
            )
        self.res.key_epoch, self.res.key_id = epoch, ident.key_id
        self.res.grace_s = req.grace_s
        now = self._grace_of(self.reg.require_device(rec.id))
        self.reg.audit(
            req.actor,
            AUDIT_BEGIN,
            rec.label,
            f"epoch={rec.key_epoch}->{epoch} grace={req.grace_s:g}s station={req.station[:64]}",
        )
        self.say(
            _("Registro: clave nueva (época {epoch}); la anterior vale hasta {until}").format(
                epoch=epoch, until=now or "—"
            )
        )

    def _grace_of(self, rec: Any) -> str | None:
        prev = rec.previous_key
        if prev is None:
            self.res.grace_s = 0
            return None
        self.res.grace_until = prev.valid_until.isoformat(timespec="seconds")
        return self.res.grace_until

    def _configure(self, sha: str) -> None:
        self.res.config_sha256 = writer.commit_staged(self.req.port, sha, self.req.cancel)
        self.say(
            _("Configuración escrita y verificada (sha256 {sha})").format(
                sha=self.res.config_sha256[:16]
            )
        )


def rotate_key(req: RotateRequest, say: Callable[[str], None] | None = None) -> RotateResult:
    """Rotate the key of the device on req.port; raises ProvisionError/AuxilioError on failure."""
    return Rotation(req, say or (lambda _line: None)).run()
