# Wi-Fi transport for ESP32 (network.WLAN station): keep the link up, report RSSI and bearer.
#
# The MQTT session asks up() before every connect; this task only owns the
# radio association and retries it with capped, jittered backoff. The LTE
# issue adds a modem transport with the same three members.
#
# RAM budget: the WLAN object (in the IDF heap) and a few ints.

import asyncio
import os
from time import ticks_diff, ticks_ms

BEARER_WIFI = 1  # auxcodec.BEARERS index
ASSOC_TIMEOUT_MS = 15000  # DHCP on busy APs can take ~10 s
RETRY_MIN_MS = 1000
RETRY_MAX_MS = 60000
CHECK_MS = 1000  # link polling period while associated


class WifiTransport:
    """Station-mode Wi-Fi link kept up by run()."""

    bearer = BEARER_WIFI

    def __init__(self, wlan, ssid, password, log):
        self.wlan = wlan
        self.ssid = ssid
        self.password = password
        self.log = log

    def up(self):
        try:
            return self.wlan.isconnected()
        except OSError:
            return False

    def rssi(self):
        try:
            return self.wlan.status("rssi")
        except (OSError, ValueError, TypeError):
            return None

    async def run(self):
        wlan = self.wlan
        wlan.active(True)
        if not self.ssid:
            self.log("wifi: no ssid in config.json; staying offline")
            return
        delay = RETRY_MIN_MS
        was_up = False
        while True:
            if wlan.isconnected():
                if not was_up:
                    was_up = True
                    delay = RETRY_MIN_MS
                    self.log("wifi: connected")
                await asyncio.sleep_ms(CHECK_MS)
                continue
            if was_up:
                was_up = False
                self.log("wifi: link lost")
            try:
                wlan.connect(self.ssid, self.password)
            except OSError as e:
                self.log("wifi: connect error %r" % e)
            t0 = ticks_ms()
            while not wlan.isconnected() and ticks_diff(ticks_ms(), t0) < ASSOC_TIMEOUT_MS:
                await asyncio.sleep_ms(200)
            if wlan.isconnected():
                continue
            # Equal jitter so a street full of buttons does not hammer the AP in step.
            wait = delay // 2 + (os.urandom(1)[0] * (delay // 2)) // 255
            self.log("wifi: association failed; retry in %d ms" % wait)
            try:
                wlan.disconnect()
            except OSError:
                pass
            await asyncio.sleep_ms(wait)
            delay = min(delay * 2, RETRY_MAX_MS)
