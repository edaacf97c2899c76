# Host shim for the ESP32 `network` module on the unix port (which has none): a WLAN
# whose link a bench or test cuts by writing "down" into LINK_FILE (set by the board;
# absent file or anything else = up). Shadows nothing: the unix port lacks `network`.

STA_IF = 0
LINK_FILE = None  # type: str | None


def link_up():
    # type: () -> bool
    if LINK_FILE is None:
        return True
    try:
        with open(LINK_FILE) as f:
            return f.read().strip() != "down"
    except OSError:
        return True


class WLAN:
    def __init__(self, interface=STA_IF):
        # type: (int) -> None
        self._active = False
        self._wanted = False

    def active(self, state=None):
        # type: (bool | None) -> bool
        if state is not None:
            self._active = bool(state)
        return self._active

    def connect(self, ssid=None, key=None):
        # type: (str | None, str | None) -> None
        self._wanted = True

    def disconnect(self):
        # type: () -> None
        self._wanted = False

    def isconnected(self):
        # type: () -> bool
        return self._active and self._wanted and link_up()
