"""A device's full config.json: identity, broker, TLS CA, topic prefix, role, intervals, Wi-Fi or APN.

The one place a config.json is made (issue 11). `check_config` runs the
firmware's own validator (firmware/config.py, loaded from the firmware tree
and fed dicts) so a config the device would refuse is refused on the host,
with the device's words, before anything is written or registered.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any

from auxilio.boards import Board, load_board
from auxilio.errors import UsageError
from auxilio.paths import firmware_dir
from auxilio.protocol import codec
from auxilio.provision.identity import IDENTITY_KEYS, Identity, new_identity

# A virtual device's Wi-Fi: the host HAL's link is always "associated" to it.
VIRTUAL_WIFI = {"ssid": "virtual", "password": "virtual"}
# Role settings a station may override (firmware/config.py _ROLE_KEYS and friends).
SETTING_KEYS = ("hold_ms", "cancel_window_s", "cancel_taps", "heartbeat_s", "discreet")
# What provisioning adds to the board's tunables: the first HEARTBEAT this long after a
# boot, so the C4 confirms a freshly configured device within seconds (issue 11 §3).
PROVISION_TUNABLES = {"first_heartbeat_s": 2}

_validator: ModuleType | None = None


def _firmware_config() -> ModuleType:
    """firmware/config.py as a module (MicroPython-compatible code; CPython runs it too)."""
    global _validator
    if _validator is None:
        path = firmware_dir() / "config.py"
        spec = importlib.util.spec_from_file_location("auxilio_fw_config", path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _validator = module
    return _validator


def _board_data(board: Board | str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(board, str):
        board = load_board(board)
    return board.device_data() if isinstance(board, Board) else board


def network(
    *,
    wifi_ssid: str | None = None,
    wifi_password: str | None = None,
    apn: str | None = None,
    sim_pin: str | None = None,
    sms_to: str | None = None,
) -> dict[str, Any]:
    """The network part of a config: Wi-Fi credentials and/or the LTE APN (and C4 SMS number)."""
    out: dict[str, Any] = {}
    if wifi_ssid:
        out["wifi"] = {"ssid": wifi_ssid, "password": wifi_password or ""}
    elif wifi_password:
        raise UsageError("a Wi-Fi password needs its network name (--wifi-ssid)")
    if apn:
        out["lte"] = {"apn": apn, **({"sim_pin": sim_pin} if sim_pin else {})}
    elif sim_pin:
        raise UsageError("a SIM PIN needs the APN (--apn)")
    if sms_to:
        out["sms"] = {"to": sms_to}
    return out


def device_config(
    identity: Identity,
    role: str,
    broker_url: str,
    *,
    net: dict[str, Any] | None = None,
    tls_ca: str | None = None,
    prefix: str = codec.DEFAULT_PREFIX,
    settings: dict[str, Any] | None = None,
    tunables: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A device's complete config.json as a dict (identity first, then the rest).

    ``net``: `network(...)` (default: the virtual Wi-Fi); ``tls_ca``: the CA's
    file name on the device (an mqtts:// broker needs one); ``settings``: role
    overrides (SETTING_KEYS); ``tunables``: merged over the board's;
    ``extra``: any other firmware key (bearers, fw, low_battery...).
    """
    cfg = identity.fields()
    cfg.update(
        role=role,
        broker=broker_url,
        tls_ca=tls_ca,
        prefix=prefix,
    )
    cfg.update(net if net is not None else {"wifi": dict(VIRTUAL_WIFI)})
    for k, val in (settings or {}).items():
        if k not in SETTING_KEYS:
            raise UsageError(f"unknown device setting {k!r} (one of {', '.join(SETTING_KEYS)})")
        cfg[k] = val
    if tunables:
        cfg["tunables"] = dict(tunables)
    cfg.update(extra or {})
    return cfg


def complete_config(
    partial: dict[str, Any],
    role: str,
    broker_url: str | None,
    **kwargs: Any,
) -> dict[str, Any]:
    """A full config from a partial one (a `devices add --secret-out` file, a test's overrides).

    The identity comes from ``partial`` (a fresh one when it has none); every
    other key of ``partial`` wins over what `device_config` would write.
    """
    from auxilio.provision.identity import identity_from_config

    ident = identity_from_config(partial) if "secret" in partial else new_identity()
    url = partial.get("broker") or broker_url
    if not url:
        raise UsageError("the config has no broker: give a broker URL")
    base = device_config(ident, partial.get("role") or role, url, **kwargs)
    rest = {k: val for k, val in partial.items() if k not in IDENTITY_KEYS}
    base.update(rest)
    return base


def new_config(role: str, broker_url: str, **kwargs: Any) -> dict[str, Any]:
    """A fresh identity's full config (random id, secret and password; never logged)."""
    return device_config(new_identity(), role, broker_url, **kwargs)


def check_config(cfg: dict[str, Any], board: Board | str | dict[str, Any]) -> None:
    """Refuse a config the firmware would refuse (UsageError with the firmware's reason)."""
    fw = _firmware_config()
    try:
        fw.Config("", codec, board=_board_data(board), cfg=cfg)
    except fw.ConfigError as exc:
        raise UsageError(f"device config refused: {exc}") from None
