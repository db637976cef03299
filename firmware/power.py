# Power supervision: low-battery thresholds, mains and tamper edges (issue 3 §9).
#
# LOW_BATTERY fires once per threshold per discharge: a threshold re-arms only
# after the level rises HYSTERESIS_PCT above it (charging or a new battery),
# so ADC noise around 20% does not spam the C4.
#
# RAM budget: a small list of armed flags and three ints per Device.

HYSTERESIS_PCT = 5


class PowerWatch:
    """Edge detection on battery level, mains presence and the tamper switch."""

    def __init__(self, thresholds, mains, tamper):
        self.thresholds = thresholds  # descending, e.g. (20, 10)
        self.armed = [True] * len(thresholds)
        self.mains = mains  # last reported state, None when the board has no sense input
        self.tamper = tamper

    def battery(self, pct):
        """Return the threshold just crossed downwards, or None."""
        if pct is None:
            return None
        crossed = None
        for i in range(len(self.thresholds)):
            t = self.thresholds[i]
            if pct >= t + HYSTERESIS_PCT:
                self.armed[i] = True
            elif pct <= t and self.armed[i]:
                self.armed[i] = False
                if crossed is None or t < crossed:
                    crossed = t
        # Crossing 20 and 10 at once (battery swapped, long sleep): report the lower,
        # but do not fire the higher one later.
        return crossed

    def mains_changed(self, on):
        if on is None or self.mains is None or on == self.mains:
            return False
        self.mains = on
        return True

    def tamper_changed(self, opened):
        if opened is None or self.tamper is None or opened == self.tamper:
            return False
        self.tamper = opened
        return True
