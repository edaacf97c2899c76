# The ESP32 boards' network_up (tendril_fw.wifi), shared by boards/esp32 and boards/esp32_bench:
# join the access point, then the clock from NTP once per boot. The WLAN and ntptime are fakes
# with the shape of MicroPython's network.WLAN and ntptime. Shared with MicroPython
# (tests/firmware/mp_runner.py): no pytest.

import asyncio

from tendril_fw import wifi


class FakeWlan:
    def __init__(self, connects_after=0):
        self.connects_after = connects_after  # isconnected() polls after connect() before it is up
        self.connected = False
        self.active_calls = []
        self.connect_calls = []
        self.polls = 0

    def isconnected(self):
        if self.connect_calls and not self.connected:
            self.polls += 1
            self.connected = self.polls > self.connects_after
        return self.connected

    def active(self, on):
        self.active_calls.append(on)

    def connect(self, ssid, password):
        self.connect_calls.append((ssid, password))


class FakeNtp:
    def __init__(self, fails=0):
        self.host = "unset"
        self.fails = fails
        self.hosts = []

    def settime(self):
        self.hosts.append(self.host)
        if self.fails:
            self.fails -= 1
            raise OSError(110)  # ETIMEDOUT: no answer from the NTP server


class FakeBoard:
    def __init__(self, wlan, hw):
        self.wlan = wlan
        self.cfg = {"board": hw}
        self.synced = False


HW = {"wifi_ssid": "home", "wifi_password": "pw"}


def _up(board, ntp):
    asyncio.run(wifi.network_up(board, ntp))


def test_joins_then_sets_the_clock_once_per_boot():
    wlan = FakeWlan(connects_after=2)
    board = FakeBoard(wlan, HW)
    ntp = FakeNtp()
    _up(board, ntp)
    assert wlan.active_calls == [True] and wlan.connect_calls == [("home", "pw")]
    assert ntp.hosts == ["pool.ntp.org"] and board.synced
    _up(board, ntp)  # reconnects after an outage: joined already, clock already set
    assert wlan.connect_calls == [("home", "pw")] and ntp.hosts == ["pool.ntp.org"]


def test_ntp_host_comes_from_the_board_config():
    board = FakeBoard(FakeWlan(), dict(HW, ntp_host="ntp.lan"))
    ntp = FakeNtp()
    _up(board, ntp)
    assert ntp.hosts == ["ntp.lan"]


def test_failed_ntp_is_retried_on_the_next_network_up():
    board = FakeBoard(FakeWlan(), HW)
    ntp = FakeNtp(fails=1)
    try:
        _up(board, ntp)
    except OSError:
        pass
    else:
        raise AssertionError("an NTP timeout must fail network_up: no session on a 2000-01-01 clock")
    assert not board.synced
    _up(board, ntp)
    assert board.synced and len(ntp.hosts) == 2


def test_join_gives_up_after_its_timeout():
    wlan = FakeWlan(connects_after=1000)
    try:
        asyncio.run(wifi.join(wlan, "home", "pw", 0.2))
    except OSError as exc:
        assert "home" in str(exc)
    else:
        raise AssertionError("join must raise OSError when the access point never answers")
    assert wlan.polls >= 2


def test_a_board_that_never_joins_never_asks_ntp():
    board = FakeBoard(FakeWlan(connects_after=1000), HW)
    ntp = FakeNtp()
    wifi.JOIN_TIMEOUT_S, saved = 0.1, wifi.JOIN_TIMEOUT_S
    try:
        _up(board, ntp)
    except OSError:
        pass
    finally:
        wifi.JOIN_TIMEOUT_S = saved
    assert ntp.hosts == [] and not board.synced
