# Fake `network` (station WLAN) for the ESP32 HAL and Wi-Fi transport tests.
STA_IF = 0


class WLAN:
    def __init__(self, i):
        self.up = False
        self.connects = 0

    def active(self, a=None):
        return True

    def isconnected(self):
        return self.up

    def connect(self, ssid, pw):
        self.connects += 1
        self.up = True

    def disconnect(self):
        self.up = False

    def status(self, what=None):
        return -61
