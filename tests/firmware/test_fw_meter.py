# Meter energy integration over device time (CPython and MicroPython).

import tendril_wire as tw
from tendril_fw.meter import MeterNode

T0 = 1700000000.0


def close(a, b):
    return abs(a - b) < 1e-9


def test_energy_is_held_power_times_elapsed_time():
    m = MeterNode()
    m.sample(T0, 1000)
    assert m.energy_wh == 0.0  # the first sample has no interval behind it
    m.sample(T0 + 1800, 2000)
    assert close(m.energy_wh, 500.0)
    m.sample(T0 + 2700, 0)
    assert close(m.energy_wh, 1000.0)
    m.sample(T0 + 9999, 3000)
    assert close(m.energy_wh, 1000.0)


def test_telemetry_integrates_up_to_its_own_time():
    m = MeterNode()
    m.sample(T0, 3600)
    msg = m.telemetry(T0 + 10)
    assert close(msg["energy_wh"], 10.0)
    assert msg["power_w"] == 3600.0 and msg["ts"] == T0 + 10 and msg["type"] == tw.DEVICE_METER
    msg = m.telemetry(T0 + 20)
    assert close(msg["energy_wh"], 20.0)


def test_seq_increases_and_records_satisfy_the_contract():
    m = MeterNode()
    m.sample(T0, 250.5)
    seqs = []
    for i in range(1, 6):
        msg = m.telemetry(T0 + 60 * i)
        tw.decode(tw.TELEMETRY, tw.encode(tw.TELEMETRY, msg))
        seqs.append(msg["seq"])
    assert seqs == [0, 1, 2, 3, 4]


def test_export_and_clock_steps_never_decrease_energy():
    m = MeterNode()
    m.sample(T0, 1000)
    m.sample(T0 + 3600, -500)  # PV export from here on
    assert close(m.energy_wh, 1000.0)
    m.sample(T0 + 7200, 1000)
    assert close(m.energy_wh, 1000.0)
    m.sample(T0 + 3600, 1000)  # clock stepped back: no negative interval
    assert close(m.energy_wh, 1000.0)
    m.sample(T0 + 7200, 1000)
    assert close(m.energy_wh, 2000.0)
