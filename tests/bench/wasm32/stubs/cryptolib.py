# Stand-in for cryptolib.aes (ECB): same interface, not a cipher (heap figures only).


class aes:
    def __init__(self, key, mode):
        self.key = bytes(key)

    def encrypt(self, data, out=None):
        if out is None:
            return bytes(len(data))
        return None
