# Feedback to the wearer or passer-by: haptic, LED ring and buzzer patterns (issue 3 §8).
#
# Bracelet (haptic only, discreet by default): one pulse when the alert is
# queued, two when the C4 has received it, one long pulse when an operator is
# attending. Discreet mode suppresses every light and sound, because an abuser
# may be in the room (DESIGN §6). The HAL plays the named pattern.
#
# RAM budget: the tables below are module constants (tuples of str); a
# Feedback instance holds 4 bools.

# event -> (haptic pattern, LED pattern, buzzer pattern)
_PATTERNS = {
    "queued": ("pulse", "blink", "chirp"),
    "received": ("double", "solid", "beep2"),
    "attending": ("long", "spin", "tone"),
    "cancelled": ("pulse", "off", "chirp"),
    "error": ("error", "error", "error"),
    "sms": ("sms", "sms", "sms"),  # the alert also left by SMS; the data ACK is still awaited
}


class Feedback:
    """Maps alert-lifecycle events to the outputs this board has."""

    def __init__(self, hal, haptic, led, buzzer, discreet):
        self.hal = hal
        self.haptic = haptic
        self.led = led
        self.buzzer = buzzer
        self.discreet = discreet

    def show(self, event):
        p = _PATTERNS.get(event)
        if p is None:
            return
        if self.haptic:
            self.hal.haptic(p[0])
        if self.discreet:
            return
        if self.led:
            self.hal.led(p[1])
        if self.buzzer:
            self.hal.buzzer(p[2])

    def error(self):
        """Error pattern: shown even in discreet mode on the haptic motor, else the LED."""
        if self.haptic:
            self.hal.haptic("error")
        elif self.led:
            self.hal.led("error")
        if self.buzzer and not self.discreet:
            self.hal.buzzer("error")
