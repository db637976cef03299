# Stand-in so hal.esp32 imports on the WebAssembly port (nothing is instantiated).


class Pin:
    IN = 1
    OUT = 3
    PULL_UP = 2
    PULL_DOWN = 1
    IRQ_FALLING = 2
    IRQ_RISING = 1


class ADC:
    ATTN_11DB = 3


class PWM:
    pass


class WDT:
    pass


class Timer:
    PERIODIC = 1


def reset_cause():
    return 1
