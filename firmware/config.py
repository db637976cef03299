# Device configuration: read config.json and board.json, validate, merge role defaults.
#
# RAM budget: one Config object (~1 KB); the parsed board.json (~12 KB on the
# 64-bit unix port) is dropped after parsing. No module-level mutable state.

import json

# Protocol CONFIG limits (SPEC §8.10 wire types) and sane field ranges.
_MAX_HEARTBEAT_S = 65535  # HEARTBEAT interval_s is u16 (SPEC §8.3); gateway supervises at 2.5x
_MIN_HEARTBEAT_S = 1  # tests shorten the cadence; production uses 60..900
_MAX_HOLD_MS = 10000
_MIN_HOLD_MS = 50
_MAX_CANCEL_S = 600

_ROLE_KEYS = ("hold_ms", "cancel_window_s", "cancel_taps", "heartbeat_s", "discreet")
_BEARERS = ("wifi", "lte")  # data bearers a board can list (SMS is the modem's fallback)
_SMS_BUDGET_S = 20  # an alert not acked this long after it was queued also goes by SMS
_LTE_TUNABLE_PREFIXES = ("modem_", "psm_", "gnss_", "sms_", "failover_", "transport_")


class ConfigError(Exception):
    """A missing or invalid config/board file; str() is one clear line (no secrets)."""


def join(root, name):
    if not root or root == ".":
        return name
    if root.endswith("/"):
        return root + name
    return root + "/" + name


def read_json(path, what):
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError:
        raise ConfigError(what + " missing (" + path + ")")
    try:
        obj = json.loads(text.decode())
    except (ValueError, UnicodeError):
        raise ConfigError(what + " is not valid JSON (" + path + ")")
    if not isinstance(obj, dict):
        raise ConfigError(what + " must be a JSON object (" + path + ")")
    return obj


def _int(d, key, lo, hi, what):
    v = d[key]
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or v > hi:
        raise ConfigError("%s: %s must be an integer in %d..%d" % (what, key, lo, hi))
    return v


def _bool(d, key, what):
    v = d[key]
    if v is not True and v is not False:
        raise ConfigError(what + ": " + key + " must be true or false")
    return v


def _str(d, key, what, required=True):
    v = d.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v:
        raise ConfigError(what + ": " + key + " must be a non-empty string")
    return v


def parse_broker(url):
    """'mqtt://host:port' or 'mqtts://host:port' -> (host, port, tls)."""
    if not isinstance(url, str):
        raise ConfigError("config.json: broker must be a URL like mqtt://host:1883")
    if url.startswith("mqtt://"):
        rest, tls, port = url[7:], False, 1883
    elif url.startswith("mqtts://"):
        rest, tls, port = url[8:], True, 8883
    else:
        raise ConfigError("config.json: broker must start with mqtt:// or mqtts://")
    rest = rest.rstrip("/")
    if ":" in rest:
        host, p = rest.rsplit(":", 1)
        try:
            port = int(p)
        except ValueError:
            raise ConfigError("config.json: broker port is not a number")
        if port < 1 or port > 65535:
            raise ConfigError("config.json: broker port out of range")
    else:
        host = rest
    if not host:
        raise ConfigError("config.json: broker host is empty")
    return host, port, tls


class Config:
    """Validated settings for one Device: identity, broker, role behaviour, tunables."""

    def __init__(self, root, codec, board=None, cfg=None):
        # board/cfg given as dicts: the host's provisioning tool checks a config
        # with this same code before it writes it (issue 11: one validator).
        if board is None:
            board = read_json(join(root, "board.json"), "board.json")
        if cfg is None:
            cfg = read_json(join(root, "config.json"), "config.json")
        # board is not kept: parsed JSON costs ~12 KB of heap on the unix port.
        w = "config.json"
        try:
            self.device = codec.device_int(_str(cfg, "device", w))
        except codec.FrameError as e:
            raise ConfigError(w + ": device id invalid (" + e.reason + ")")
        self.device_str = codec.device_str(self.device)
        secret = _str(cfg, "secret", w)
        try:
            if len(secret) != 64:
                raise ValueError
            from binascii import unhexlify

            self.secret = unhexlify(secret)
        except ValueError:
            raise ConfigError(w + ": secret must be 64 hex characters")
        roles = board.get("roles")
        if not isinstance(roles, dict) or not roles:
            raise ConfigError("board.json: roles missing")
        role = cfg.get("role", board.get("role"))
        if role not in roles:
            raise ConfigError(w + ": role must be one of " + ", ".join(sorted(roles)))
        self.role = role
        self.host, self.port, self.tls = parse_broker(cfg.get("broker"))
        self.username = _str(cfg, "username", w, False) or self.device_str
        self.password = _str(cfg, "password", w, False)
        self.tls_ca = _str(cfg, "tls_ca", w, False)
        if self.tls and self.tls_ca is None:
            raise ConfigError(w + ": mqtts:// needs tls_ca (the pinned CA file)")
        self.server_hostname = _str(cfg, "server_hostname", w, False) or self.host
        wifi = cfg.get("wifi")
        if wifi is not None and not isinstance(wifi, dict):
            raise ConfigError(w + ": wifi must be an object with ssid and password")
        self.wifi_ssid = wifi.get("ssid") if wifi else None
        self.wifi_password = wifi.get("password") if wifi else None
        self.prefix = _str(cfg, "prefix", w, False) or "auxilio"
        # SPEC §12.1: the lowest counter this secret may still use, written by
        # the host tool from the registry whenever it writes a known secret.
        floor = cfg.get("counter_floor", 0)
        if not isinstance(floor, int) or isinstance(floor, bool) or floor < 0 or floor > 0xFFFFFFFF:
            raise ConfigError(w + ": counter_floor must be an integer in 0..4294967295")
        self.counter_floor = floor
        # Role defaults from the board, then config.json overrides (DESIGN §5.5).
        d = {}
        base = roles[role]
        for k in _ROLE_KEYS:
            if k in base:
                d[k] = base[k]
            if k in cfg:
                d[k] = cfg[k]
        for k in _ROLE_KEYS:
            if k not in d:
                raise ConfigError("board.json: role " + role + " lacks " + k)
        self.hold_ms = _int(d, "hold_ms", _MIN_HOLD_MS, _MAX_HOLD_MS, w)
        self.cancel_window_s = _int(d, "cancel_window_s", 0, _MAX_CANCEL_S, w)
        self.cancel_taps = _int(d, "cancel_taps", 2, 9, w)
        self.heartbeat_s = _int(d, "heartbeat_s", _MIN_HEARTBEAT_S, _MAX_HEARTBEAT_S, w)
        self.discreet = _bool(d, "discreet", w)
        lb = cfg.get("low_battery", base.get("low_battery", (20, 10)))
        if not isinstance(lb, (list, tuple)):
            raise ConfigError(w + ": low_battery must be a list of percentages")
        for t in lb:
            if not isinstance(t, int) or t < 1 or t > 99:
                raise ConfigError(w + ": low_battery must be a list of percentages")
        self.low_battery = tuple(sorted(lb, reverse=True))
        fw = cfg.get("fw", "0.1.0")
        try:
            parts = [int(p) for p in fw.split(".")]
            if len(parts) != 3 or min(parts) < 0 or max(parts) > 255:
                raise ValueError
        except (AttributeError, ValueError):
            raise ConfigError(w + ": fw must look like 1.2.3")
        self.fw = parts
        # Tunables: board data, then an optional "tunables" object in config.json
        # (the lab and the tests shorten retry timers this way).
        t = {}
        t.update(board.get("tunables") or {})
        over = cfg.get("tunables")
        if over is not None:
            if not isinstance(over, dict):
                raise ConfigError(w + ": tunables must be an object")
            t.update(over)
        for k in t:
            if t[k] is not None and (not isinstance(t[k], int) or t[k] < 0):
                raise ConfigError(w + ": tunables." + k + " must be a non-negative integer")
        self.outbox_slots = t.get("outbox_slots", 16)
        self.counter_block = t.get("counter_block", 32)
        self.retry_base_ms = t.get("retry_base_ms", 2000)
        self.retry_cap_ms = t.get("retry_cap_ms", 60000)
        self.input_poll_ms = t.get("input_poll_ms", 500)
        self.watchdog_ms = t.get("watchdog_ms", 30000)
        self.keepalive_s = t.get("keepalive_s", 60)
        self.deep_sleep_idle_s = t.get("deep_sleep_idle_s", 0)
        # The first HEARTBEAT this long after boot (None: a full interval). The
        # provisioning tool sets it so the C4 sees a beat within seconds of a boot.
        self.first_heartbeat_s = t.get("first_heartbeat_s")
        # Optional MQTT reconnect backoff overrides (None = the session's defaults).
        self.mqtt_backoff_min_ms = t.get("mqtt_backoff_min_ms")
        self.mqtt_backoff_max_ms = t.get("mqtt_backoff_max_ms")
        self._bearers(root, board, cfg, t)
        fb = board.get("feedback") or {}
        self.has_haptic = bool(fb.get("haptic"))
        self.has_led = bool(fb.get("led"))
        self.has_buzzer = bool(fb.get("buzzer"))
        inputs = board.get("inputs") or {}
        self.has_tamper = bool(inputs.get("tamper"))
        self.has_mains = bool(inputs.get("mains"))

    def _bearers(self, root, board, cfg, t):
        """Bearer order, modem wiring and LTE/SMS settings (issue 12)."""
        w = "config.json"
        order = cfg.get("bearers", board.get("bearers")) or ["wifi"]
        if not isinstance(order, list) or not order:
            raise ConfigError(w + ': bearers must be a list like ["wifi", "lte"]')
        for b in order:
            if b not in _BEARERS:
                raise ConfigError(w + ": bearers may only name " + ", ".join(_BEARERS))
        m = board.get("modem")
        self.modem = None  # {"profile": name, "pins": {...}} when the board drives a modem
        if isinstance(m, dict) and m.get("profile"):
            self.modem = {
                "profile": m["profile"],
                "pins": dict(m.get("pins") or {}),
                "file": join(root, "modem.json"),  # boards/modems/<profile>.json "at" part
            }
        if "lte" in order and self.modem is None:
            raise ConfigError("board.json: bearer lte needs a modem with a profile")
        self.bearers = tuple(order)
        lte = cfg.get("lte") or {}
        sms = cfg.get("sms") or {}
        if not isinstance(lte, dict) or not isinstance(sms, dict):
            raise ConfigError(w + ": lte and sms must be objects")
        self.apn = _str(lte, "apn", w + " lte", False)
        self.sim_pin = _str(lte, "sim_pin", w + " lte", False)
        self.roaming = lte.get("roaming", True) is not False  # a lifeline roams by default
        self.low_power = lte.get("low_power", "psm")
        if self.low_power not in ("psm", "edrx", "off"):
            raise ConfigError(w + ": lte.low_power must be psm, edrx or off")
        self.sms_to = _str(sms, "to", w + " sms", False)  # the C4's SMS number (E.164)
        if self.sms_to is not None and not (
            self.sms_to[0] == "+" and self.sms_to[1:].isdigit() and 8 <= len(self.sms_to) <= 16
        ):
            raise ConfigError(w + ": sms.to must be an E.164 number like +525512345678")
        budget = sms.get("budget_s", _SMS_BUDGET_S)
        if not isinstance(budget, int) or budget < 1 or budget > 3600:
            raise ConfigError(w + ": sms.budget_s must be an integer in 1..3600")
        self.sms_budget_s = budget
        # Modem/transport tunables (names in transport.py and modem.py), board then config.
        self.lte_tunables = {k: t[k] for k in t if k.startswith(_LTE_TUNABLE_PREFIXES)}

    def read_ca(self, root):
        """The pinned CA file's bytes, or None for plain MQTT."""
        if self.tls_ca is None:
            return None
        try:
            with open(join(root, self.tls_ca), "rb") as f:
                return f.read()
        except OSError:
            raise ConfigError("config.json: tls_ca file missing (" + self.tls_ca + ")")
