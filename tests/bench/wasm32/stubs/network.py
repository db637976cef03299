# Stand-in so wifi imports on the WebAssembly port.
STA_IF = 0


class WLAN:
    def __init__(self, iface):
        pass
