"""The device-setup library on its own: identities, configs the firmware accepts, roots."""

from __future__ import annotations

import json
import stat

import pytest
from auxilio.errors import UsageError
from auxilio.keys import sealed_id
from auxilio.provision.config import check_config, device_config, network, new_config
from auxilio.provision.identity import identity_from_config, new_identity
from auxilio.provision.writer import config_bytes, write_root


def test_identity_is_fresh_and_never_shows_its_secret() -> None:
    a, b = new_identity(), new_identity()
    assert a.device != b.device and a.secret != b.secret and len(a.secret) == 32
    assert a.secret.hex() not in repr(a) and (a.password or "") not in repr(a)
    sealed = b"sealed-blob"
    reg = a.with_registry(3, 4097, sealed)
    f = reg.fields()
    assert (f["key_epoch"], f["counter_floor"], f["key_id"]) == (3, 4097, sealed_id(sealed))
    assert f["username"] == f["device"] == a.label
    back = identity_from_config(f)
    assert back.secret == a.secret and back.key_id == reg.key_id


def test_configs_are_checked_by_the_firmware_validator() -> None:
    cfg = new_config("bracelet", "mqtt://127.0.0.1:1883")
    check_config(cfg, "bracelet-c3")
    with pytest.raises(UsageError, match="tls_ca"):
        check_config(dict(cfg, broker="mqtts://127.0.0.1:8883"), "bracelet-c3")
    check_config(dict(cfg, broker="mqtts://127.0.0.1:8883", tls_ca="ca.der"), "bracelet-c3")
    with pytest.raises(UsageError, match="sms.to"):
        check_config(dict(cfg, **network(sms_to="5512")), "bracelet-c3")
    with pytest.raises(UsageError, match="role"):
        check_config(dict(cfg, role="lamp"), "bracelet-c3")
    with pytest.raises(UsageError, match="heartbeat_s"):
        check_config(
            device_config(new_identity(), "button", "mqtt://h:1", settings={"heartbeat_s": 0}),
            "button-s3",
        )


def test_network_choices() -> None:
    assert network(wifi_ssid="c4", wifi_password="pw") == {"wifi": {"ssid": "c4", "password": "pw"}}
    assert network(apn="iot.x", sim_pin="1234")["lte"] == {"apn": "iot.x", "sim_pin": "1234"}
    with pytest.raises(UsageError):
        network(wifi_password="orphan")
    with pytest.raises(UsageError):
        device_config(new_identity(), "bracelet", "mqtt://h:1", settings={"colour": "pink"})


def test_a_root_holds_a_private_config(tmp_path) -> None:
    cfg = new_config("button", "mqtt://127.0.0.1:1883")
    root = write_root(tmp_path / "r", cfg, "button-s3", files={"modem.json": b"{}"})
    p = root / "config.json"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert p.read_bytes() == config_bytes(cfg) and json.loads(p.read_text()) == cfg
    assert (root / "data").is_dir() and json.loads((root / "board.json").read_text())["name"]
    assert (root / "modem.json").read_bytes() == b"{}"
