"""Issue 8 §5 repro: re-flashing a bracelet with its old config never reuses a counter.

The README's flow, for real: `auxilio keys init`, `auxilio devices add
--secret-out b1.json`, the gateway on a real mosquitto with that registry, and
`auxilio emulate --format --firmware --config b1.json` running the firmware.
The operator attends the first alert. Then the same emulate command runs again
with the same file (a technician re-flashing the bracelet) and the wearer
presses again: that alert must be a new one for the C4, not the old row's
`attending` answer (SPEC §12.1 counter_floor, §12.2).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from auxilio.gateway.control import request_attend
from auxilio.gateway.forward import JsonlSink
from auxilio.keys import load_private_key
from auxilio.paths import firmware_dir
from auxilio.protocol import codec
from auxilio.registry.store import COUNTER_FLOOR_MARGIN
from auxilio.testing.c4 import C4

from tests.emulator.test_cli import Emulator, one_line_error, run_cli, vboard

pytestmark = [
    pytest.mark.emulator,
    pytest.mark.integration,
    pytest.mark.skipif(not (firmware_dir() / "app.py").exists(), reason="no firmware"),
]

NAME = "b1"
WAIT_S = 60.0


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The README's environment: default registry and keys, private runtime dir."""
    (tmp_path / "run").mkdir()
    return dict(
        os.environ,
        XDG_RUNTIME_DIR=str(tmp_path / "run"),
        AUXILIO_REGISTRY=str(tmp_path / "var" / "auxilio.db"),
        AUXILIO_KEYS_DIR=str(tmp_path / "var" / "keys"),
    )


def _enrol(tmp_path: Path, env: dict[str, str]) -> tuple[Path, dict[str, Any]]:
    assert run_cli("keys", "init", env=env).returncode == 0
    prov = tmp_path / "b1.json"
    r = run_cli(
        "devices", "add", "--kind", "bracelet", "--board", "bracelet-c3",
        "--secret-out", str(prov), env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return prov, json.loads(prov.read_text())


def _events(env: dict[str, str]) -> list[dict[str, Any]]:
    return [json.loads(x) for x in vboard(NAME, env, "events", "--last", "500").splitlines()]


def _wait(cond: Callable[[], Any], what: str) -> Any:
    return C4.wait(cond, WAIT_S, what)


def _at_least(n: int, rows: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    return rows if len(rows) >= n else None


def _press(env: dict[str, str], pattern: str) -> list[str]:
    """Hold the alert gesture; wait for that haptic pattern; return this run's haptics."""
    _wait(lambda: json.loads(vboard(NAME, env, "status"))["control_connected"], "the firmware")
    vboard(NAME, env, "hold")
    haptics = lambda: [e["pattern"] for e in _events(env) if e.get("ev") == "haptic"]  # noqa: E731
    _wait(lambda: pattern in haptics(), f"the {pattern!r} haptic pattern")
    return haptics()


def test_reflash_with_the_old_config_gets_a_new_alert_not_the_old_answer(
    tmp_path: Path, env: dict[str, str], c4: Callable[..., C4], mqtt_broker: Any
) -> None:
    prov, cfg = _enrol(tmp_path, env)
    assert (cfg["key_epoch"], cfg["counter_floor"]) == (1, 1)
    dev = cfg["device"]
    out = io.StringIO()
    c = c4(
        registry=env["AUXILIO_REGISTRY"],
        key=load_private_key(Path(env["AUXILIO_KEYS_DIR"]) / "gateway.key"),
        sink=JsonlSink(out),
    )
    # The README's command, twice with the same file.
    emulate = [
        "--board", "bracelet-c3", "--format", "--firmware", "--config", str(prov),
        "--broker", mqtt_broker.url, "--image", str(tmp_path / "b1.img"), "--name", NAME,
    ]  # fmt: skip

    emu = Emulator(emulate, env)
    try:
        assert emu.info["counter_floor"] == 1  # nothing stored yet under this key
        assert _press(env, "double")[:2] == ["pulse", "double"]
        (first,) = _wait(lambda: c.alerts(dev, "ALERT"), "the first alert row")
        res = request_attend(mqtt_broker.url, first["id"], "operadora-1")
        assert res.sent, res
        _wait(lambda: "long" in [e.get("pattern") for e in _events(env)], "the attending pulse")
    finally:
        rc, err = emu.stop()
    assert rc == 0, err
    hw = c.high_water(dev)
    assert hw >= first["counter"] and c.alerts(dev, "ALERT")[0]["attending_at"] is not None

    emu = Emulator(emulate, env)
    try:
        assert emu.info["counter_floor"] == hw + COUNTER_FLOOR_MARGIN  # from the registry
        haptics = _press(env, "double")
        rows = _wait(lambda: _at_least(2, c.alerts(dev, "ALERT")), "the second alert row")
        acked = [e for e in _events(env) if e.get("name") == "acked"]
    finally:
        rc, err = emu.stop()
    assert rc == 0, err
    assert "warning" not in err
    # Stored as a NEW alert, above everything the C4 had seen under this key...
    assert [r["counter"] for r in rows][0] == first["counter"]
    second = rows[1]
    assert second["counter"] > hw
    assert second["disposition"] == "received" and second["attending_at"] is None
    assert second["counter"] in [e["counter"] for e in acked]
    # ...felt as "received" (two pulses), never as the old row's "attending" pulse...
    assert haptics == ["pulse", "double"]
    # ...with no counter collision anywhere in this run (the BOOT started at the floor too),
    assert c.events(dev, "COUNTER_COLLISION") == []
    boots = c.alerts(dev, "BOOT")
    assert len(boots) == 2 and boots[1]["counter"] >= hw + COUNTER_FLOOR_MARGIN
    # ...and forwarded to dispatch.
    _wait(lambda: c.alerts(dev, "ALERT")[1]["forwarded_at"], "alert 2 forwarded")
    recs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["counter"] for r in recs if r["kind"] == "alert"] == [
        first["counter"],
        second["counter"],
    ]


def test_emulate_config_counter_floor_sources(tmp_path: Path, env: dict[str, str]) -> None:
    """--config not in the registry: one warning line; --counter-floor: exact; bad: one error."""
    prov, cfg = _enrol(tmp_path, env)
    # A bare board (no firmware): only what emulate writes into config.json matters here.
    base = ["--image", str(tmp_path / "x.img"), "--format", "--name", "x"]
    base += ["--broker", "mqtt://127.0.0.1:9"]
    # A config the registry does not know (e.g. another site's): the config's own floor.
    stranger = codec.device_str(0x0938_0001)
    other = dict(cfg, device=stranger, username=stranger, counter_floor=77)
    (tmp_path / "other.json").write_text(json.dumps(other))
    emu = Emulator([*base, "--config", str(tmp_path / "other.json")], env)
    rc, err = emu.stop()
    assert rc == 0 and emu.info["counter_floor"] is None
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and stranger in warnings[0] and "(77)" in warnings[0], err
    # An explicit floor wins over the registry's.
    emu = Emulator([*base, "--config", str(prov), "--counter-floor", "12345"], env)
    rc, err = emu.stop()
    assert rc == 0 and emu.info["counter_floor"] == 12345 and "warning" not in err
    # A config for an older key epoch (the device was re-keyed since): refused.
    (tmp_path / "old.json").write_text(json.dumps(dict(cfg, key_epoch=0)))
    line = one_line_error(
        run_cli("emulate", *base, "--config", str(tmp_path / "old.json"), env=env)
    )
    assert "key epoch 0" in line
    for bad in ("-1", "4294967296", "lots"):
        line = one_line_error(
            run_cli("emulate", *base, "--config", str(prov), "--counter-floor", bad, env=env)
        )
        assert "--counter-floor" in line
    line = one_line_error(run_cli("emulate", *base, "--counter-floor", "5", env=env))
    assert "--config" in line


# Retries in seconds, not minutes: the fleet's first BOOT waits for its registration.
FAST_RETRY = {"tunables": {"retry_base_ms": 300, "retry_cap_ms": 1000}}


def test_fleet_kept_identity_restarts_above_the_registry_floor(
    tmp_path: Path, c4: Callable[..., C4], mqtt_broker: Any
) -> None:
    """A fleet restarted with --registry on kept identities whose data/ is gone (SPEC §12.1)."""
    from auxilio.emulator.fleet import VirtualFleet
    from auxilio.keys import init_keys

    priv, _pub = init_keys(tmp_path / "keys")
    db = str(tmp_path / "registry.db")
    c = c4(registry=db, key=load_private_key(priv))
    work = tmp_path / "fleet"
    kw: dict[str, Any] = {"workdir": work, "config_overrides": FAST_RETRY, "registry": db}
    with VirtualFleet(1, mqtt_broker.url, **kw) as fleet:
        assert fleet.register(db, tmp_path / "keys") == 1
        dev = fleet.devices[0].device
        _wait(lambda: c.alerts(dev, "BOOT"), "the first BOOT stored")
    hw = c.high_water(dev)
    floor = c.registry.counter_floor(dev)
    assert floor > hw > 0
    root = work / "devices" / "0000"
    shutil.rmtree(root / "data")  # the identity is kept, its counters are not
    with VirtualFleet(1, mqtt_broker.url, **kw):
        assert json.loads((root / "config.json").read_text())["counter_floor"] == floor
        boots = _wait(lambda: _at_least(2, c.alerts(dev, "BOOT")), "the second BOOT stored")
    assert boots[1]["counter"] >= floor
    assert c.events(dev, "COUNTER_COLLISION") == []
