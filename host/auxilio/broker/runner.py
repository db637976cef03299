"""Run the broker: mosquitto with the generated config, else the embedded amqtt demo broker."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path

from auxilio.broker.mosquitto import mosquitto_binary
from auxilio.errors import AuxilioError, NotFoundError

log = logging.getLogger(__name__)

# Shown whenever the embedded broker runs: it is a demo convenience, not a C4 broker.
EMBEDDED_NOTE = (
    "NOTA: broker MQTT embebido (amqtt) solo para demostraciones: más lento, sin "
    "TCP_NODELAY ni TLS, y anónimo sin ACL por dispositivo salvo que use un directorio "
    "de `auxilio broker config`. En producción use mosquitto (`auxilio broker config` + "
    "`auxilio broker run`) o un broker en clúster.\n"
    "NOTE: embedded MQTT broker (amqtt) for demos only: slower, no TCP_NODELAY, no TLS, "
    "and anonymous without per-device ACLs unless given an `auxilio broker config` "
    "directory. Production needs mosquitto or a clustered broker."
)


def run_mosquitto(conf: str | Path) -> int:
    """Run mosquitto in the foreground; SIGINT/SIGTERM stop it, SIGHUP reloads it."""
    binary = mosquitto_binary()
    if binary is None:
        raise NotFoundError("mosquitto is not installed (apt-get install mosquitto)")
    conf = Path(conf)
    if not conf.exists():
        raise NotFoundError(f"{conf} not found (run `auxilio broker config` first)")
    proc = subprocess.Popen([binary, "-c", str(conf)])

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    rc = proc.wait()
    if rc not in (0, -signal.SIGTERM, -signal.SIGINT):
        raise AuxilioError(f"mosquitto exited with status {rc} (see its log above)")
    return 0


def run_embedded(
    bind: str = "127.0.0.1", port: int = 1883, config_dir: str | Path | None = None
) -> int:
    """Run the amqtt broker in the foreground until SIGINT/SIGTERM.

    With ``config_dir`` (from `auxilio broker config`) it enforces that password
    file and ACL; without, it is anonymous and open.
    """
    import asyncio

    from auxilio.broker.embedded import serve

    sys.stderr.write(EMBEDDED_NOTE + "\n")
    sys.stderr.write(
        f"embedded broker: users and ACL from {config_dir}\n"
        if config_dir is not None
        else "embedded broker: anonymous, no per-device ACL\n"
    )
    sys.stderr.flush()
    try:
        asyncio.run(serve(bind, port, config_dir))
    except KeyboardInterrupt:
        pass
    return 0
